#!/bin/sh
# Mutation testing with cargo-mutants on the modules where a silent bug would hurt most: admission
# limits, the PROXY protocol encoder, the TLS profile and client authentication, and configuration
# validation. Each mutant (an operator flipped, a function body replaced by a default value) must
# make some test fail; the ones that do not ("missed") are listed, and docs/testing.md says which
# are known and why each is harmless. Not part of CI or scripts/test.sh: a full run takes hours.
#
#   scripts/mutants.sh [MODULE...]    MODULE: limits, proxy_protocol, tls, config, trust,
#                                     registry (default: all)
#
# Each module is mutated with only the tests that guard it (its unit tests plus the integration
# test modules of tests/it named below), so one module's run stays around half an hour on 2 cores. Results go
# to target/mutants/MODULE/mutants.out/ (missed.txt, caught.txt, timeout.txt, outcomes.json).
# Installs cargo-mutants with `cargo install --locked` when it is missing. Exits 1 when any mutant
# was missed or timed out, 2 on bad arguments.
set -eu
cd "$(dirname "$0")/.."
. scripts/common.sh
need_cargo

if ! cargo mutants --version >/dev/null 2>&1; then
    echo "installing cargo-mutants (once)" >&2
    cargo install --locked cargo-mutants
fi

# tests_for MODULE: the `cargo test` arguments that guard MODULE: its unit tests and the modules of
# the one integration-test binary (tests/it) about it. Name filters (after the second --) are
# substrings matched against every test's path in both targets: `limits::` keeps the unit tests,
# `hostile::`-style prefixes whole suites, and limits adds the cap and drain tests (which wait on
# Tracker::wait_idle) wherever they live.
tests_for() {
    case "$1" in
        limits) echo "--lib --test it -- limits:: max_ per_ip refusal sigterm drain" ;;
        proxy_protocol) echo "--lib --test it -- proxy" ;;
        tls) echo "--lib --test it -- tls:: cipher_policy:: tls_options:: startup:: access:: ocsp::" ;;
        config) echo "--lib --test it -- config:: startup::" ;;
        trust) echo "--lib --test it -- tls:: trust:: revoke:: ticket_keys:: ocsp::" ;;
        registry) echo "--lib --test it -- revoke:: shutdown:: relay::" ;;
        *) return 1 ;;
    esac
}

# files_for MODULE: the --file arguments of what cargo mutants mutates: the module's file, every
# file of its folder, or for the groups named after an issue's concern, the files that hold it
# (trust: how sessions, stapled responses and open connections are judged again over time;
# registry: the open connections and the stop a reload sends them).
files_for() {
    case "$1" in
        trust) echo "--file src/tls/resume.rs --file src/tls/recheck.rs --file src/tls/stapling.rs" ;;
        registry) echo "--file src/connection/registry.rs --file src/shutdown.rs" ;;
        *) if [ -d "src/$1" ]; then echo "--file src/$1/*.rs"; else echo "--file src/$1.rs"; fi ;;
    esac
}

[ $# -gt 0 ] || set -- limits proxy_protocol tls config trust registry
for module in "$@"; do
    tests_for "$module" >/dev/null || {
        echo "mutants.sh: unknown module '$module' (limits, proxy_protocol, tls, config, trust, registry)" >&2
        exit 2
    }
done

set -f
status=0
for module in "$@"; do
    out="target/mutants/$module"
    mkdir -p "$out"
    echo "== cargo mutants $(files_for "$module"): cargo test $(tests_for "$module")"
    # --timeout: a mutant that deadlocks (a gate that never releases) is cut after 2 minutes of
    # tests, whose unmutated run takes seconds; builds get longer on a machine shared with other
    # compiles. The shell splits the file and test arguments on purpose; globbing is off (set -f)
    # so cargo mutants, not the shell, expands a folder's *.rs.
    # shellcheck disable=SC2046
    if ! cargo mutants $(files_for "$module") --timeout 120 --build-timeout 900 \
        --output "$out" -- $(tests_for "$module"); then
        status=1
    fi
    for kind in missed timeout; do
        if [ -s "$out/mutants.out/$kind.txt" ]; then
            echo "-- $module: $kind"
            sed 's/^/   /' "$out/mutants.out/$kind.txt"
        fi
    done
done
exit "$status"
