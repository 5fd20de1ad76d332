# interlock's image, built from source: a Rust stage compiles the release binary, and the
# runtime stage is FROM scratch with only the binary and the C libraries it links (about
# 13 MB), running as an unprivileged user.
#
#   docker build -t interlock .
#   docker build --build-arg RUST_IMAGE=my/rust:1.85 -t interlock .
#
# Works with BuildKit and with the classic builder (DOCKER_BUILDKIT=0). To package a binary
# built outside Docker (no Rust image needed), use docker/prebuilt.Dockerfile, whose runtime
# stage is this one's, line for line. See docs/swarm.md.

ARG RUST_IMAGE=rust:1-slim-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
# Path dependencies: the socket-option crate, and the tests' harness (a dev-dependency,
# whose manifest cargo reads to resolve the workspace; nothing of it is built).
COPY sockopt sockopt
COPY testkit testkit
COPY benches benches
COPY examples examples
COPY docker/rootfs.sh /usr/local/bin/interlock-rootfs
RUN cargo build --release --locked --bin interlock \
    && interlock-rootfs target/release/interlock /out

# The runtime stage (the same in docker/prebuilt.Dockerfile, sources aside).
FROM scratch
COPY --from=build /out/rootfs /
# The proxy's --state-file lives here (mount a volume: a new named volume takes this
# ownership): writable by the runtime user only. A directory of its own, since COPY --chown
# does not change a directory that an earlier COPY created.
COPY --from=build --chown=65532:65532 /out/state /var/lib/interlock
USER 65532:65532
# 8080 HTTP, 8443 TLS, 7443 controller snapshot API, 9090 admin
EXPOSE 8080 8443 7443 9090
# Serving or not, asked of the admin listener (--admin / INTERLOCK_ADMIN) by the binary itself.
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 CMD ["/interlock", "health"]
ENTRYPOINT ["/interlock"]
CMD ["--help"]
