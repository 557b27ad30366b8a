#!/bin/sh
# Installs what the tests need and runs the whole suite: formatting, lints (clippy and shellcheck),
# then every unit and integration test against the real binary and the real `openssl s_client`.
set -eu
cd "$(dirname "$0")/.."
. scripts/common.sh

need_packages openssl libssl-dev pkg-config gcc libc6-dev ca-certificates shellcheck
need_cargo

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== shellcheck"
shellcheck scripts/*.sh .ci/run
echo "== cargo clippy"
cargo clippy --locked --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --locked
