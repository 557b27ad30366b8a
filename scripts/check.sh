#!/bin/sh
# Checks a securesock server the way a user would: with `openssl s_client`.
#
#   scripts/check.sh [HOST:PORT] [--ca FILE] [--expect TEXT] [--servername NAME]
#
# Prints the protocol, cipher, verification result and what the server sent. Exits 0 only when the
# handshake worked at TLS 1.2 or later, the certificate verified against FILE (when --ca is given),
# and the server sent exactly TEXT (default: Hello, secure world!).
set -eu

target=127.0.0.1:12345
ca=""
expect="Hello, secure world!"
servername=""
while [ $# -gt 0 ]; do
    case "$1" in
        --ca) [ $# -ge 2 ] || { echo "check.sh: --ca needs a file" >&2; exit 2; }; ca=$2; shift 2 ;;
        --expect) [ $# -ge 2 ] || { echo "check.sh: --expect needs text" >&2; exit 2; }; expect=$2; shift 2 ;;
        --servername) [ $# -ge 2 ] || { echo "check.sh: --servername needs a name" >&2; exit 2; }; servername=$2; shift 2 ;;
        -h|--help) sed -n '4p' "$0" | sed 's/^#  *//'; exit 0 ;;
        -*) echo "check.sh: unknown option '$1'" >&2; exit 2 ;;
        *) target=$1; shift ;;
    esac
done
if [ -n "$ca" ] && [ ! -r "$ca" ]; then
    echo "check.sh: cannot read CA file '$ca'" >&2
    exit 2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# -brief puts the connection summary on stderr and only the server's bytes on stdout; -ign_eof keeps
# s_client reading until the server closes instead of quitting when stdin (empty) ends.
set -- -connect "$target" -brief -ign_eof
if [ -n "$ca" ]; then
    set -- "$@" -CAfile "$ca" -verify_return_error
fi
if [ -n "$servername" ]; then
    set -- "$@" -servername "$servername"
fi
rc=0
timeout 15 openssl s_client "$@" </dev/null >"$tmp/data" 2>"$tmp/info" || rc=$?

field() {
    sed -n "s/^$1: *//p" "$tmp/info" | head -n 1
}
protocol=$(field "Protocol version")
cipher=$(field "Ciphersuite")
verification=$(field "Verification")
[ -n "$verification" ] || verification=$(field "Verification error")
data=$(cat "$tmp/data")

echo "server:       $target"
echo "protocol:     ${protocol:-none}"
echo "cipher:       ${cipher:-none}"
if [ -n "$ca" ]; then
    echo "verification: ${verification:-failed}"
else
    echo "verification: skipped (no --ca given)"
fi
echo "received:     $data"

fail() {
    echo "FAIL: $1" >&2
    sed 's/^/  s_client: /' "$tmp/info" >&2
    exit 1
}
[ "$rc" -eq 0 ] || fail "openssl s_client exited with $rc"
case "$protocol" in
    TLSv1.2|TLSv1.3) ;;
    "") fail "no TLS handshake" ;;
    *) fail "protocol $protocol is older than TLS 1.2" ;;
esac
if [ -n "$ca" ] && [ "$verification" != "OK" ]; then
    fail "certificate did not verify against $ca"
fi
[ "$data" = "$expect" ] || fail "expected '$expect'"
echo "OK"
