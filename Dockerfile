# syntax=docker/dockerfile:1
# securesock container image.
#
#   docker build -t securesock .
#   docker run -d --name securesock -p 12345:12345 -v "$PWD/certs:/certs:ro" securesock
#   scripts/check.sh 127.0.0.1:12345 --ca certs/server-cert.pem
# With a configuration file (any number of services; `securesock --config` it):
#   docker run -d -p 12345:12345 -v "$PWD/certs:/certs:ro" \
#       -v "$PWD/securesock.toml:/etc/securesock/securesock.toml:ro" securesock
#
# Two stages on the same Debian release (trixie, the current stable), so the binary finds at run time
# the glibc and libssl ABI it was linked against. Trixie's OpenSSL 3.5 has ML-KEM, so the image
# offers the post-quantum hybrid X25519MLKEM768 first (bookworm's OpenSSL 3.0 could not).
# scripts/container-smoke.sh reads the runtime stage below (its FROM, RUN, COPY, ENV, USER,
# ENTRYPOINT and HEALTHCHECK lines) and replays it in a debootstrap root, so keep those lines in the
# simple forms used here.

# Pinned to a release tag, never the floating rust:1, whose Debian release moves on: a builder newer
# than the runtime stage would link glibc symbols that debian:trixie-slim cannot load. 1.91 >= our
# rust-version (1.85).
FROM rust:1.91-slim-trixie AS builder
# make: the allocator's (jemalloc's) C build.
# hadolint ignore=DL3008 # unpinned on purpose: trixie's point and security releases replace exact versions on the mirror, and the tag above already fixes the release
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl-dev pkg-config make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and the build tree between builds; the binary is copied
# out of the cached target/ in the same step because a cache mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin securesock \
    && install -D -m 0755 target/release/securesock /out/securesock

FROM debian:trixie-slim AS runtime
# libssl3t64: the binary links libssl.so.3 dynamically (trixie's name for the package since the
# 64-bit time_t transition). openssl: the entrypoint makes a self-signed pair with it and the
# HEALTHCHECK runs `openssl s_client`. ca-certificates: for verifying upstreams and clients.
# /certs belongs to the runtime user so the entrypoint can write a self-signed pair into an empty volume.
# hadolint ignore=DL3008 # unpinned on purpose: libssl3t64 security fixes must arrive on every rebuild, and the trixie-slim tag fixes the release
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3t64 openssl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -m 0700 -o 10001 -g 10001 /certs
COPY --from=builder /out/securesock /usr/local/bin/securesock
COPY scripts/docker-entrypoint.sh scripts/healthcheck.sh scripts/gen-certs.sh scripts/check.sh /usr/local/bin/
# The drain must end before docker's stop grace (10 s unless `docker run --stop-timeout N`) runs out
# and SIGKILL arrives: raise both together, e.g. --stop-timeout 40 -e SECURESOCK_DRAIN_TIMEOUT=30.
ENV SECURESOCK_LISTEN=0.0.0.0:12345 SECURESOCK_CERT=/certs/server-cert.pem SECURESOCK_KEY=/certs/server-key.pem SECURESOCK_DRAIN_TIMEOUT=8
VOLUME ["/certs"]
EXPOSE 12345
# Numeric, so Kubernetes' runAsNonRoot can verify it without an /etc/passwd entry.
USER 10001:10001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=5s --retries=3 CMD ["/usr/local/bin/healthcheck.sh"]
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
