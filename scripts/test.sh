#!/bin/sh
# Installs what the tests need and runs the whole suite: formatting, lints (clippy and shellcheck),
# every unit and integration test against the real binary and the real `openssl s_client` (and, for
# client mode, a TLS-only `redis-server` reached with `redis-cli`; `man`, zsh and fish for the
# generated pages and completions), then
# the Kubernetes manifest checks, the sslyze compliance scan, and the container and Debian package
# checks (these need root; tools and root filesystems are cached under /var/cache/securesock-*).
set -eu
cd "$(dirname "$0")/.."
. scripts/common.sh

need_packages openssl libssl-dev pkg-config gcc make libc6-dev ca-certificates shellcheck \
    redis-server redis-tools systemd faketime man-db groff-base zsh fish
need_cargo

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== shellcheck"
shellcheck scripts/*.sh deploy/kubernetes/check.sh packaging/postinst packaging/postrm \
    packaging/securesock-start packaging/securesock-reload .ci/run
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --locked --workspace
echo "== kubernetes manifests (yamllint, schemas, security properties)"
deploy/kubernetes/check.sh
echo "== TLS compliance scan (sslyze against Mozilla intermediate and modern)"
scripts/scan-test.sh
echo "== container image and Debian package (hadolint, rootfs smoke test, systemd-nspawn)"
scripts/container-test.sh
