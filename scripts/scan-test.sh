#!/bin/sh
# Scans a real securesock with scripts/scan.sh (sslyze) against both Mozilla profiles:
#   - intermediate, with gen-certs.sh's default certificate (RSA 2048, 365 days);
#   - modern (--tls-profile modern), with an ECDSA P-256 certificate valid 90 days (--ecdsa --days 90);
# and checks that the scan can fail: the intermediate server is not 'modern', and a self-signed
# certificate is not trusted without --ca.
#
#   scripts/scan-test.sh
#
# Each server listens on 127.0.0.1:0; its address comes from its "listening on ADDR" log line. Uses
# $SECURESOCK_BIN when set, else builds the debug binary. Exits non-zero on the first failure.
set -eu
cd "$(dirname "$0")/.."

if [ -n "${SECURESOCK_BIN:-}" ]; then
    bin=$SECURESOCK_BIN
else
    cargo build --locked --quiet --bin securesock
    bin=target/debug/securesock
fi

tmp=$(mktemp -d)
server_pid=""
reader_pid=""
cleanup() {
    [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
    [ -z "$reader_pid" ] || kill "$reader_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
    echo "FAIL: $1" >&2
    if [ -n "${log:-}" ] && [ -s "$log" ]; then
        tail -n 20 "$log" | sed 's/^/  server: /' >&2
    fi
    exit 1
}

# start_server NAME ARGS...: starts the binary on 127.0.0.1:0 and sets $addr to the address it bound.
# Its stderr goes through a FIFO to a reader that copies it to $tmp/NAME.log and, on the "listening on"
# line, writes the address to a second FIFO that we block on: no polling, no sleep. If the server dies
# first, the reader closes that FIFO empty.
start_server() {
    name=$1
    shift
    log=$tmp/$name.log
    mkfifo "$tmp/$name.err" "$tmp/$name.ready"
    (
        while IFS= read -r line; do
            printf '%s\n' "$line" >>"$log"
            case "$line" in
                *" listening on "*)
                    rest=${line#* listening on }
                    printf '%s\n' "${rest%% *}" >"$tmp/$name.ready"
                    # The rest of the log (sslyze makes hundreds of connections) needs no parsing.
                    exec cat >>"$log"
                    ;;
            esac
        done
        : >"$tmp/$name.ready"
    ) <"$tmp/$name.err" &
    reader_pid=$!
    "$bin" --listen 127.0.0.1:0 "$@" 2>"$tmp/$name.err" &
    server_pid=$!
    addr=$(timeout 30 cat "$tmp/$name.ready") || true
    [ -n "$addr" ] || fail "$name: securesock did not report a listening address"
}

# stop_server: SIGTERM by PID, then expects a clean drain (exit 0).
stop_server() {
    kill "$server_pid"
    rc=0
    wait "$server_pid" || rc=$?
    server_pid=""
    wait "$reader_pid" || true
    reader_pid=""
    [ "$rc" -eq 0 ] || fail "securesock exited with $rc after SIGTERM"
}

# scan EXPECTED_STATUS LABEL ARGS...: runs scan.sh and checks its exit status (0 compliant,
# 1 not compliant); prints the report when the status is not the one expected.
scan() {
    expected=$1
    label=$2
    shift 2
    start=$(date +%s)
    rc=0
    timeout 600 scripts/scan.sh "$@" >"$tmp/report" 2>&1 || rc=$?
    echo "scan: $label: exit $rc (expected $expected) in $(($(date +%s) - start))s"
    if [ "$rc" -ne "$expected" ]; then
        sed 's/^/  /' "$tmp/report" >&2
        fail "$label"
    fi
}

scripts/gen-certs.sh --out "$tmp/rsa" >/dev/null
scripts/gen-certs.sh --out "$tmp/ecdsa" --ecdsa --days 90 >/dev/null

start_server intermediate --cert "$tmp/rsa/server-cert.pem" --key "$tmp/rsa/server-key.pem"
scan 0 "intermediate, RSA certificate" "$addr" --profile intermediate --ca "$tmp/rsa/server-cert.pem"
scan 1 "intermediate server is not 'modern'" "$addr" --profile modern --ca "$tmp/rsa/server-cert.pem"
grep -q "tls_versions: TLS versions {'TLSv1.2'}" "$tmp/report" ||
    fail "the modern scan of the intermediate server did not name TLS 1.2"
scan 1 "self-signed certificate without --ca is untrusted" "$addr" --profile intermediate
grep -q "certificate_path_validation" "$tmp/report" ||
    fail "the scan without --ca did not report the certificate as untrusted"
stop_server

start_server modern --tls-profile modern --cert "$tmp/ecdsa/server-cert.pem" --key "$tmp/ecdsa/server-key.pem"
scan 0 "modern, ECDSA P-256 90-day certificate" "$addr" --profile modern --ca "$tmp/ecdsa/server-cert.pem"
stop_server

echo "scan-test: OK"
