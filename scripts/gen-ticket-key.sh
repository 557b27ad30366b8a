#!/bin/sh
# Writes a session-ticket key for --ticket-key-file: 80 random bytes (nginx's
# ssl_session_ticket_key format: 16 bytes name, 32 HMAC, 32 AES), mode 0600.
#
#   scripts/gen-ticket-key.sh [--force] FILE
#
# An existing FILE is kept unless --force is given, so running it twice is harmless and never
# throws away a key that replicas are using. To rotate, put a new key in front and drop the oldest
# (see docs/tls.md, "Sharing ticket keys between replicas").
set -eu

usage() {
    sed -n '6p' "$0" | sed 's/^#  *//' >&2
}

force=0
file=""
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "gen-ticket-key.sh: unknown option '$1'" >&2; usage; exit 2 ;;
        *)
            [ -z "$file" ] || { echo "gen-ticket-key.sh: one FILE only" >&2; usage; exit 2; }
            file=$1
            shift
            ;;
    esac
done
[ -n "$file" ] || { usage; exit 2; }
command -v openssl >/dev/null 2>&1 || {
    echo "gen-ticket-key.sh: openssl not found (apt-get install openssl)" >&2
    exit 1
}
if [ -e "$file" ] && [ "$force" -eq 0 ]; then
    echo "gen-ticket-key.sh: $file exists; keeping it (use --force to replace it)" >&2
    exit 0
fi

dir=$(dirname "$file")
mkdir -p "$dir"
umask 077
tmp=$(mktemp "$dir/.ticket-key.XXXXXX")
trap 'rm -f "$tmp"' EXIT
openssl rand -out "$tmp" 80
chmod 600 "$tmp"
mv -f "$tmp" "$file"
trap - EXIT
echo "wrote an 80-byte session-ticket key to $file (mode 0600)"
