#!/bin/sh
# Checks a securesock server the way a user would: with `openssl s_client`.
#
#   scripts/check.sh [HOST:PORT] [--ca FILE] [--expect TEXT] [--servername NAME]
#
# Prints the protocol, cipher, verification result and what the server sent. Exits 0 only when the
# handshake worked at TLS 1.2 or later, the certificate verified against FILE (when --ca is given),
# the server sent exactly TEXT (default: Hello, secure world!), byte for byte, with no trailing
# newline, and then ended the stream with close_notify rather than a bare TCP close.
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
# The comparison is on the files, byte for byte: $(cat) would drop trailing newlines, and a server
# that sends "TEXT\n" must fail. $data is only for display.
printf '%s' "$expect" >"$tmp/expect"
data=$(cat "$tmp/data")
got_bytes=$(wc -c <"$tmp/data" | tr -d ' ')
want_bytes=$(wc -c <"$tmp/expect" | tr -d ' ')

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
# The first failure found is the one reported, most specific first, so the message says why.
# OpenSSL 3 reports a TCP close without close_notify as an unexpected EOF (and exits 1); a client
# cannot tell such an end from a truncation, so it fails the check whatever else went right.
if grep -q "unexpected eof while reading" "$tmp/info"; then
    fail "the server closed the connection without close_notify (unexpected EOF)"
fi
if [ -n "$ca" ] && grep -q "^verify error:" "$tmp/info"; then
    fail "certificate did not verify against $ca: $(sed -n 's/^verify error:num=[0-9]*://p' "$tmp/info" | head -n 1)"
fi
case "$protocol" in
    TLSv1.2|TLSv1.3) ;;
    "") fail "no TLS handshake" ;;
    *) fail "protocol $protocol is older than TLS 1.2" ;;
esac
[ "$rc" -eq 0 ] || fail "openssl s_client exited with $rc"
if [ -n "$ca" ] && [ "$verification" != "OK" ]; then
    fail "certificate did not verify against $ca"
fi
cmp -s "$tmp/expect" "$tmp/data" ||
    fail "expected '$expect' ($want_bytes bytes), received $got_bytes bytes that differ"
echo "OK"
