#!/bin/sh
# Makes a self-signed server certificate and key with the tutorial's `openssl req` command, plus a
# subject and SANs so it never prompts and clients can verify it by name or by address.
#
#   scripts/gen-certs.sh [--out DIR] [--days N] [--name DNS-or-IP]... [--ecdsa] [--force]
#
# Writes DIR/server-key.pem (mode 0600) and DIR/server-cert.pem (default DIR: certs/). An existing
# pair is kept unless --force is given, so running it twice is harmless. The first --name is the
# subject's CN; a wildcard ('*.example.org', quoted) works as a name.
set -eu

usage() {
    sed -n '5p' "$0" | sed 's/^#  *//' >&2
}

out=certs
days=365
names=""
force=0
ecdsa=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || { usage; exit 2; }; out=$2; shift 2 ;;
        --days) [ $# -ge 2 ] || { usage; exit 2; }; days=$2; shift 2 ;;
        --name) [ $# -ge 2 ] || { usage; exit 2; }; names="$names $2"; shift 2 ;;
        --ecdsa) ecdsa=1; shift ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gen-certs.sh: unknown argument '$1'" >&2; usage; exit 2 ;;
    esac
done
case "$days" in
    ''|*[!0-9]*|0) echo "gen-certs.sh: --days needs a positive whole number, got '$days'" >&2; exit 2 ;;
esac
command -v openssl >/dev/null 2>&1 || {
    echo "gen-certs.sh: openssl not found (apt-get install openssl)" >&2
    exit 1
}

key="$out/server-key.pem"
cert="$out/server-cert.pem"
if [ "$force" -eq 0 ] && { [ -e "$key" ] || [ -e "$cert" ]; }; then
    echo "gen-certs.sh: $key or $cert already exists; keeping them (use --force to replace)" >&2
    exit 0
fi

# Subject alternative names: localhost and 127.0.0.1 always, then every --name, as an IP entry when
# it looks like an address and as a DNS entry otherwise. The first --name is also the CN.
san="DNS:localhost,IP:127.0.0.1"
cn=localhost
# No pathname expansion while splitting the names: a wildcard such as '*.example.org' must stay one,
# whatever files the current directory holds.
set -f
for n in $names; do
    case "$n" in
        *:*) san="$san,IP:$n" ;;
        *[!0-9.]*) san="$san,DNS:$n" ;;
        *) san="$san,IP:$n" ;;
    esac
    [ "$cn" = localhost ] && cn=$n
done
set +f

mkdir -p "$out"
umask 077
tmpkey=$(mktemp "$out/.server-key.XXXXXX")
tmpcert=$(mktemp "$out/.server-cert.XXXXXX")
trap 'rm -f "$tmpkey" "$tmpcert"' EXIT

if [ "$ecdsa" -eq 1 ]; then
    newkey="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
else
    newkey="-newkey rsa:2048"
fi
# The tutorial's command, with -subj and -addext so it runs unattended. `req -x509` marks the
# certificate as a CA by default (openssl.cnf's v3_ca); strict verifiers (Python's cryptography, hence
# sslyze, and rustls/webpki) then refuse it as a server certificate even when told to trust it, so it is
# declared an end-entity certificate for TLS servers. OpenSSL clients given it with -CAfile accept both.
# shellcheck disable=SC2086 # $newkey is two or three words on purpose
openssl req $newkey -nodes -keyout "$tmpkey" -x509 -days "$days" -out "$tmpcert" \
    -subj "/CN=$cn" -addext "subjectAltName=$san" \
    -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" 2>/dev/null

chmod 600 "$tmpkey"
chmod 644 "$tmpcert"
mv -f "$tmpkey" "$key"
mv -f "$tmpcert" "$cert"
trap - EXIT

echo "wrote $key (mode 0600) and $cert"
echo "  subject: CN=$cn"
echo "  names:   $san"
echo "  valid:   $days days"
openssl x509 -in "$cert" -noout -fingerprint -sha256 | sed 's/^/  /'
echo "check a running server with:"
echo "  openssl s_client -connect 127.0.0.1:12345 -CAfile $cert -verify_return_error -brief -ign_eof </dev/null"
echo "  scripts/check.sh 127.0.0.1:12345 --ca $cert"
