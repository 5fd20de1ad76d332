# interlock's image around a binary built outside Docker: no Rust image, no build stage, so
# nothing is pulled and any builder works (BuildKit or the classic DOCKER_BUILDKIT=0).
#
#   cargo build --release --bin interlock
#   docker/rootfs.sh target/release/interlock DIR      # DIR/rootfs and DIR/state
#   docker build -f docker/prebuilt.Dockerfile -t interlock DIR
#
# The image carries the C libraries the binary links, taken from the machine that built it
# (ldd), so it runs wherever Docker does. See docs/swarm.md.

# The runtime stage (the same in the Dockerfile, sources aside).
FROM scratch
COPY rootfs /
# The proxy's --state-file lives here (mount a volume: a new named volume takes this
# ownership): writable by the runtime user only. A directory of its own, since COPY --chown
# does not change a directory that an earlier COPY created.
COPY --chown=65532:65532 state /var/lib/interlock
USER 65532:65532
# 8080 HTTP, 8443 TLS, 7443 controller snapshot API, 9090 admin
EXPOSE 8080 8443 7443 9090
# Serving or not, asked of the admin listener (--admin / INTERLOCK_ADMIN) by the binary itself.
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 CMD ["/interlock", "health"]
ENTRYPOINT ["/interlock"]
CMD ["--help"]
