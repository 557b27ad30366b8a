#!/bin/sh
# Builds the Debian package: the release binary, then the man pages and shell completion scripts
# that binary writes of itself (target/assets/, named in Cargo.toml's [package.metadata.deb]
# assets), then `cargo deb` around them. The last line on stdout is the .deb's path.
#
#   scripts/build-deb.sh [cargo deb options...]
#
# Needs cargo-deb (`cargo install --locked cargo-deb`) and gzip.
set -eu
cd "$(dirname "$0")/.."

cargo build --release --locked --bin securesock
bin=target/release/securesock
out=target/assets
rm -rf "$out"
mkdir -p "$out"
# -n: no name or time stamp in the gzip header, so the same binary makes the same package.
"$bin" manual securesock.1 | gzip -9n >"$out/securesock.1.gz"
"$bin" manual securesock.toml.5 | gzip -9n >"$out/securesock.toml.5.gz"
"$bin" completions bash >"$out/securesock.bash"
"$bin" completions zsh >"$out/_securesock"
"$bin" completions fish >"$out/securesock.fish"
# --no-build: the binary above is the one the pages describe.
cargo deb --locked --no-build "$@"
