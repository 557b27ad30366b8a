#!/bin/sh
# The container's HEALTHCHECK: a TLS handshake with the server through `openssl s_client`. Healthy
# (exit 0) when the handshake completes at TLS 1.2 or later; it does not judge the certificate or
# what the server sends, so it holds for every mode that serves TLS on TCP and every certificate
# (not client mode, whose listener speaks plaintext, nor a unix: listener).
#
#   healthcheck.sh [HOST:PORT]     default: 127.0.0.1 and the port of $SECURESOCK_LISTEN (12345)
set -eu

if [ $# -gt 0 ]; then
    target=$1
else
    listen=${SECURESOCK_LISTEN:-0.0.0.0:12345}
    port=${listen##*:}
    case "$listen" in
        \[*) target="[::1]:$port" ;;  # an IPv6 listener is IPv6-only
        *) target="127.0.0.1:$port" ;;
    esac
fi

# Without -ign_eof s_client quits once the handshake is done and stdin (empty) ends; -brief prints
# the negotiated protocol on stderr.
if ! info=$(timeout 5 openssl s_client -connect "$target" -brief </dev/null 2>&1 >/dev/null); then
    echo "unhealthy: no TLS handshake with $target: $(echo "$info" | tail -n 1)"
    exit 1
fi
protocol=$(echo "$info" | sed -n 's/^Protocol version: *//p' | head -n 1)
case "$protocol" in
    TLSv1.2|TLSv1.3) echo "healthy: $protocol handshake with $target" ;;
    *) echo "unhealthy: handshake with $target gave protocol '${protocol:-none}'"; exit 1 ;;
esac
