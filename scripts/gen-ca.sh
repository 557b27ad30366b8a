#!/bin/sh
# Makes a small test PKI for mutual TLS: a CA, a server certificate it signs, a client certificate,
# a revoked client certificate with the CRL that lists it, and a client from an unrelated CA.
#
#   scripts/gen-ca.sh [--out DIR] [--days N] [--name DNS-or-IP]... [--force]
#
# DIR (default certs/mtls/) receives, keys mode 0600:
#   ca-cert.pem ca-key.pem              the test CA (give it to --client-ca)
#   server-cert.pem server-key.pem      signed by the CA; SANs localhost, 127.0.0.1 and each --name
#   client-cert.pem client-key.pem      CN=client, clientAuth: accepted
#   api-cert.pem api-key.pem            CN=api, OU=payments, SANs DNS:api.example.org and
#                                       URI:spiffe://example.org/service/api (for --allow-* rules)
#   revoked-cert.pem revoked-key.pem    CN=revoked, clientAuth, listed in crl.pem: refused with a CRL
#   crl.pem                             the CA's CRL
#   other-ca-cert.pem other-ca-key.pem  an unrelated CA
#   other-client-cert.pem other-client-key.pem  CN=client from the other CA: refused
# An existing complete set is kept unless --force is given, so running it twice is harmless; a
# partial set is refused (it would mix two CAs) until --force replaces it.
set -eu

usage() {
    sed -n '5p' "$0" | sed 's/^#  *//' >&2
}

out=certs/mtls
days=365
names=""
force=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || { usage; exit 2; }; out=$2; shift 2 ;;
        --days) [ $# -ge 2 ] || { usage; exit 2; }; days=$2; shift 2 ;;
        --name) [ $# -ge 2 ] || { usage; exit 2; }; names="$names $2"; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gen-ca.sh: unknown argument '$1'" >&2; usage; exit 2 ;;
    esac
done
case "$days" in
    ''|*[!0-9]*|0) echo "gen-ca.sh: --days needs a positive whole number, got '$days'" >&2; exit 2 ;;
esac
command -v openssl >/dev/null 2>&1 || {
    echo "gen-ca.sh: openssl not found (apt-get install openssl)" >&2
    exit 1
}

files="ca-cert.pem ca-key.pem server-cert.pem server-key.pem client-cert.pem client-key.pem
api-cert.pem api-key.pem revoked-cert.pem revoked-key.pem crl.pem other-ca-cert.pem other-ca-key.pem
other-client-cert.pem other-client-key.pem"

how_to_use() {
    echo "use them with:"
    echo "  securesock --cert $out/server-cert.pem --key $out/server-key.pem --client-ca $out/ca-cert.pem"
    echo "  openssl s_client -connect 127.0.0.1:12345 -CAfile $out/ca-cert.pem \\"
    echo "      -cert $out/client-cert.pem -key $out/client-key.pem -verify_return_error -brief"
    echo "refused (revoked, once the server loads $out/crl.pem):"
    echo "  openssl s_client -connect 127.0.0.1:12345 -CAfile $out/ca-cert.pem \\"
    echo "      -cert $out/revoked-cert.pem -key $out/revoked-key.pem -verify_return_error -brief"
    echo "refused (another CA):"
    echo "  openssl s_client -connect 127.0.0.1:12345 -CAfile $out/ca-cert.pem \\"
    echo "      -cert $out/other-client-cert.pem -key $out/other-client-key.pem -verify_return_error -brief"
}

if [ "$force" -eq 0 ]; then
    present=0
    absent=0
    for f in $files; do
        if [ -e "$out/$f" ]; then present=$((present + 1)); else absent=$((absent + 1)); fi
    done
    if [ "$absent" -eq 0 ]; then
        echo "gen-ca.sh: $out already holds a complete set; keeping it (use --force to replace)" >&2
        how_to_use
        exit 0
    fi
    if [ "$present" -gt 0 ]; then
        echo "gen-ca.sh: $out holds an incomplete set ($absent file(s) missing); use --force to replace it" >&2
        exit 1
    fi
fi

# Server SANs: localhost and 127.0.0.1 always, then every --name (IP entry when it looks like an
# address, DNS entry otherwise), as gen-certs.sh does.
san="DNS:localhost,IP:127.0.0.1"
for n in $names; do
    case "$n" in
        *:*) san="$san,IP:$n" ;;
        *[!0-9.]*) san="$san,DNS:$n" ;;
        *) san="$san,IP:$n" ;;
    esac
done

mkdir -p "$out"
umask 077
work=$(mktemp -d "$out/.gen-ca.XXXXXX")
trap 'rm -rf "$work"' EXIT

# P-256 keys: fast to make and accepted by both TLS profiles.
key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/$1-key.pem" 2>/dev/null
}

# A random positive 127-bit serial, so certificates from different runs never collide.
serial() {
    echo "0x$(openssl rand -hex 16 | sed 's/^[89a-f]/7/')"
}

# Extensions for each kind of certificate, in one file, picked by section.
cat >"$work/ext.cnf" <<EOF
[ca]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[workload]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:api.example.org, URI:spiffe://example.org/service/api
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

# ca NAME CN: a self-signed CA.
ca() {
    key "$1"
    openssl req -new -x509 -key "$work/$1-key.pem" -subj "/CN=$2" -days "$days" \
        -set_serial "$(serial)" -config "$work/ext.cnf" -extensions ca \
        -out "$work/$1-cert.pem" 2>/dev/null
}

# leaf NAME SUBJECT KIND CA: a certificate of KIND (server, client or workload) signed by CA;
# SUBJECT is a bare CN or a whole /K=V/... subject.
leaf() {
    key "$1"
    case "$2" in
        /*) subject=$2 ;;
        *) subject="/CN=$2" ;;
    esac
    openssl req -new -key "$work/$1-key.pem" -subj "$subject" -out "$work/$1.csr" 2>/dev/null
    openssl x509 -req -in "$work/$1.csr" -CA "$work/$4-cert.pem" -CAkey "$work/$4-key.pem" \
        -set_serial "$(serial)" -days "$days" -sha256 \
        -extfile "$work/ext.cnf" -extensions "$3" -out "$work/$1-cert.pem" 2>/dev/null
    rm -f "$work/$1.csr"
}

ca ca "securesock test CA"
leaf server localhost server ca
leaf client client client ca
leaf api "/OU=payments/CN=api" workload ca
leaf revoked revoked client ca
ca other-ca "unrelated test CA"
leaf other-client client client other-ca

# The CRL, with `openssl ca` and a throw-away database: revoke, then publish.
: >"$work/index.txt"
echo 01 >"$work/crlnumber"
cat >"$work/ca.cnf" <<EOF
[ca]
default_ca = test
[test]
database = $work/index.txt
crlnumber = $work/crlnumber
certificate = $work/ca-cert.pem
private_key = $work/ca-key.pem
default_md = sha256
default_crl_days = $days
EOF
openssl ca -config "$work/ca.cnf" -revoke "$work/revoked-cert.pem" -crl_reason keyCompromise 2>/dev/null
openssl ca -config "$work/ca.cnf" -gencrl -out "$work/crl.pem" 2>/dev/null

for f in $files; do
    case "$f" in
        *-key.pem) chmod 600 "$work/$f" ;;
        *) chmod 644 "$work/$f" ;;
    esac
done
for f in $files; do
    mv -f "$work/$f" "$out/$f"
done

echo "wrote a test PKI to $out (keys mode 0600):"
echo "  CA:      $(openssl x509 -in "$out/ca-cert.pem" -noout -subject)"
echo "  server:  names $san"
echo "  api:     CN=api, OU=payments, DNS:api.example.org, URI:spiffe://example.org/service/api"
echo "  client:  CN=client; revoked: CN=revoked, $(openssl x509 -in "$out/revoked-cert.pem" -noout -serial)"
echo "  other:   CN=client signed by $(openssl x509 -in "$out/other-ca-cert.pem" -noout -subject)"
echo "  valid:   $days days"
how_to_use
