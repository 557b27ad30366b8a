#!/bin/sh
# The container's entry point. Serves the configuration file when one is mounted, else the flags and
# SECURESOCK_* variables (making a self-signed certificate pair when none is mounted), and execs
# securesock so that it is the process that receives docker's SIGTERM (and drains) instead of a shell.
#
#   docker run -v "$PWD/securesock.toml:/etc/securesock/securesock.toml:ro" IMAGE
#                                               securesock --config /etc/securesock/securesock.toml
#   docker run IMAGE [securesock flags...]      e.g. docker run IMAGE --tls-profile modern
#   docker run IMAGE COMMAND [args...]          runs COMMAND instead, e.g. docker run IMAGE sh
#
# The file is $SECURESOCK_CONFIG when set, else /etc/securesock/securesock.toml. It is used when it
# exists and no flags are given; it holds the whole configuration, certificates included, so no
# self-signed pair is made for it. Flags given beside a mounted file are served alone (the file is
# not read, and a line says so), as securesock refuses flags together with --config.
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

config=${SECURESOCK_CONFIG:-/etc/securesock/securesock.toml}
if [ -e "$config" ]; then
    if [ $# -eq 0 ]; then
        exec securesock --config "$config"
    fi
    echo "docker-entrypoint: flags given: serving them, not $config" >&2
    # securesock itself reads SECURESOCK_CONFIG, and would refuse it beside flags.
    unset SECURESOCK_CONFIG
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
