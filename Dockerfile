# interlock's image: a multi-stage build whose runtime stage is FROM scratch with only the
# binary and the C libraries it links (about 12 MB), running as an unprivileged user.
#
#   docker build -t interlock .                           # build from source (Rust image)
#   docker build --build-arg RUST_IMAGE=my/rust:1.85 -t interlock .
#   docker build --build-arg ARTIFACTS=prebuilt -t interlock DIR
#       # DIR/rootfs made by `docker/rootfs.sh target/release/interlock DIR/rootfs`: the same
#       # runtime stage around a binary built outside Docker (what the tests do)
#
# Needs BuildKit (DOCKER_BUILDKIT=1, the default since Docker 23), which skips the stage
# ARTIFACTS does not name. See docs/swarm.md.

ARG RUST_IMAGE=rust:1-slim-bookworm
ARG ARTIFACTS=build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY examples examples
COPY docker/rootfs.sh /usr/local/bin/interlock-rootfs
RUN cargo build --release --locked --bin interlock \
    && interlock-rootfs target/release/interlock /rootfs

FROM scratch AS prebuilt
COPY rootfs /rootfs

FROM ${ARTIFACTS} AS artifacts

FROM scratch
COPY --from=artifacts /rootfs /
# The proxy's --state-file lives here (mount a volume): writable by the runtime user only.
COPY --from=artifacts --chown=65532:65532 /rootfs/var/lib/interlock /var/lib/interlock
USER 65532:65532
# 8080 HTTP, 8443 TLS, 7443 controller snapshot API, 9090 admin
EXPOSE 8080 8443 7443 9090
ENTRYPOINT ["/interlock"]
CMD ["--help"]
