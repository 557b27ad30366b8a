#!/bin/sh
# The container's entry point. Makes a self-signed certificate pair when none is mounted, then execs
# securesock so that it is the process that receives docker's SIGTERM (and drains) instead of a shell.
#
#   docker run IMAGE [securesock flags...]      e.g. docker run IMAGE --tls-profile modern
#   docker run IMAGE COMMAND [args...]          runs COMMAND instead, e.g. docker run IMAGE sh
#
# The certificate and key are $SECURESOCK_CERT and $SECURESOCK_KEY (the image sets /certs/...).
# When both are missing and SECURESOCK_SELF_SIGNED is not "never", a self-signed pair is made there
# with gen-certs.sh; clients must then trust that certificate explicitly.
set -eu

cert=${SECURESOCK_CERT:-/certs/server-cert.pem}
key=${SECURESOCK_KEY:-/certs/server-key.pem}

# A first argument that is not a flag is a command to run instead of the server.
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

if [ ! -e "$cert" ] && [ ! -e "$key" ]; then
    dir=$(dirname "$cert")
    if [ "${SECURESOCK_SELF_SIGNED:-auto}" = never ]; then
        echo "docker-entrypoint: no certificate at $cert and SECURESOCK_SELF_SIGNED=never; mount one at $dir" >&2
        exit 2
    fi
    # gen-certs.sh writes fixed names into one directory: only make a pair it can write where asked.
    if [ "$cert" != "$dir/server-cert.pem" ] || [ "$key" != "$dir/server-key.pem" ]; then
        echo "docker-entrypoint: no certificate at $cert and no key at $key, and they are not DIR/server-cert.pem and DIR/server-key.pem; mount a pair" >&2
        exit 2
    fi
    cat >&2 <<WARN
docker-entrypoint: ************************************************************************
docker-entrypoint: WARNING: no certificate mounted at $dir: making a SELF-SIGNED pair.
docker-entrypoint: Clients cannot verify it unless they trust $cert explicitly.
docker-entrypoint: For production mount a real pair: -v /path/to/certs:$dir:ro
docker-entrypoint: ************************************************************************
WARN
    gen-certs.sh --out "$dir" --name "$(hostname)" >&2
fi

exec securesock "$@"
