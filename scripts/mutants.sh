#!/bin/sh
# Mutation testing with cargo-mutants on the modules where a silent bug would hurt most: admission
# limits, the PROXY protocol encoder, the TLS profile and client authentication, and configuration
# validation. Each mutant (an operator flipped, a function body replaced by a default value) must
# make some test fail; the ones that do not ("missed") are listed, and docs/testing.md says which
# are known and why each is harmless. Not part of CI or scripts/test.sh: a full run takes hours.
#
#   scripts/mutants.sh [MODULE...]    MODULE: limits, proxy_protocol, tls, config (default: all)
#
# Each module is mutated with only the tests that guard it (the unit tests plus the integration
# test crates named below), so one module's run stays around half an hour on 2 cores. Results go
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

# tests_for MODULE: the `cargo test` arguments that guard MODULE: the unit tests (all of them take
# half a second) and the integration test crates about it. Name filters (after the second --)
# apply to every target: limits keeps its unit tests, the cap tests and the drain tests (which
# wait on Tracker::wait_idle), modes.rs is cut down to its PROXY tests.
tests_for() {
    case "$1" in
        limits) echo "--lib --test hostile --test operations -- limits:: max_ per_ip refusal sigterm drain" ;;
        proxy_protocol) echo "--lib --test modes -- proxy" ;;
        tls) echo "--lib --test cipher_policy --test tls_options --test startup" ;;
        config) echo "--lib --test startup" ;;
        *) return 1 ;;
    esac
}

[ $# -gt 0 ] || set -- limits proxy_protocol tls config
for module in "$@"; do
    tests_for "$module" >/dev/null || {
        echo "mutants.sh: unknown module '$module' (limits, proxy_protocol, tls, config)" >&2
        exit 2
    }
done

status=0
for module in "$@"; do
    out="target/mutants/$module"
    mkdir -p "$out"
    echo "== cargo mutants on src/$module.rs: cargo test $(tests_for "$module")"
    # --timeout: a mutant that deadlocks (a gate that never releases) is cut after 2 minutes of
    # tests, whose unmutated run takes seconds; builds get longer on a machine shared with other
    # compiles. The shell splits the test arguments on purpose.
    # shellcheck disable=SC2046
    if ! cargo mutants --file "src/$module.rs" --timeout 120 --build-timeout 900 \
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
