#!/bin/sh
# Sets up and starts securesock on this machine: installs the missing system packages (libssl-dev,
# pkg-config, openssl, a C toolchain), makes a self-signed certificate when there is none, builds the
# release binary and runs it. Extra arguments go to the binary, e.g.
#
#   scripts/run.sh --listen 127.0.0.1:8443
set -eu
cd "$(dirname "$0")/.."
. scripts/common.sh

need_packages openssl libssl-dev pkg-config gcc make libc6-dev ca-certificates
need_cargo
if [ ! -e certs/server-cert.pem ] && [ ! -e certs/server-key.pem ]; then
    scripts/gen-certs.sh
fi
# The first build compiles every dependency and is silent for minutes without this line; later
# ones only rebuild what changed.
if [ ! -e target/release/securesock ]; then
    echo "building securesock (first build takes a few minutes)..." >&2
fi
# On a terminal cargo's progress bar shows how far the build is; in a log it is noise.
if [ -t 2 ]; then
    cargo build --release --locked --bin securesock
else
    cargo build --release --locked --quiet --bin securesock
fi
exec target/release/securesock "$@"
