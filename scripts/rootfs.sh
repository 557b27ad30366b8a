#!/bin/sh
# Makes (once) and prints the path of a cached Debian root filesystem (bookworm unless --suite says
# otherwise) for the container and package tests: debootstrap --variant=minbase, plus --include
# packages, plus the shell commands in the --setup file run inside it (as root, with /proc, /dev and
# the network, like a Dockerfile RUN).
#
#   scripts/rootfs.sh --name NAME [--suite bookworm|trixie] [--include PKG,PKG...] [--setup FILE]
#
# The cache lives outside the repo, in $SECURESOCK_ROOTFS_CACHE (default /var/cache/securesock-rootfs),
# one directory per NAME and suite, named after a hash of (suite, mirror, packages, setup commands):
# change any of them and the next run builds a new root and drops the old one. Downloaded .debs are
# kept too, so a rebuild is quick.
# The Debian mirror is the machine's own, read from its apt sources (the first URI ending in /debian,
# and the one ending in /debian-security for security updates); SECURESOCK_DEBIAN_MIRROR and
# SECURESOCK_DEBIAN_SECURITY_MIRROR override them, e.g. on an Ubuntu host.
# Needs root, debootstrap and util-linux (unshare, flock). Only the last line on stdout is the path.
set -eu

# Bump when the way roots are made changes, so every cached root is rebuilt.
recipe=1
cache=${SECURESOCK_ROOTFS_CACHE:-/var/cache/securesock-rootfs}

# apt_uri PATH: the first http(s) URI in the machine's apt sources (deb822 .sources or one-line .list)
# whose path ends in /PATH, without the trailing slash; nothing when there is none.
apt_uri() {
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
        sed -n 's/^URIs:[[:space:]]*//p; s/^deb[[:space:]][[:space:]]*\(\[[^]]*\][[:space:]]*\)\{0,1\}//p' |
        tr -s '[:blank:]' '\n' | grep -E "^https?://.*/$1/?\$" | head -n 1 | sed 's:/$::' || true
}

name=""
suite=bookworm
include=""
setup=""
while [ $# -gt 0 ]; do
    case "$1" in
        --name) [ $# -ge 2 ] || { echo "rootfs.sh: --name needs a value" >&2; exit 2; }; name=$2; shift 2 ;;
        --suite) [ $# -ge 2 ] || { echo "rootfs.sh: --suite needs a value" >&2; exit 2; }; suite=$2; shift 2 ;;
        --include) [ $# -ge 2 ] || { echo "rootfs.sh: --include needs a value" >&2; exit 2; }; include=$2; shift 2 ;;
        --setup) [ $# -ge 2 ] || { echo "rootfs.sh: --setup needs a file" >&2; exit 2; }; setup=$2; shift 2 ;;
        *) echo "rootfs.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
case "$name" in
    ''|*[!a-z0-9-]*) echo "rootfs.sh: --name must be lower-case letters, digits and dashes" >&2; exit 2 ;;
esac
# The suites whose debian:<suite>-slim images the tests stand in for (both use deb822 sources and a
# <suite>-security suite, as written below).
case "$suite" in
    bookworm|trixie) ;;
    *) echo "rootfs.sh: --suite must be bookworm or trixie, got '$suite'" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
    echo "rootfs.sh: needs root (debootstrap, chroot, mount namespaces)" >&2
    exit 1
fi
command -v debootstrap >/dev/null 2>&1 || {
    echo "rootfs.sh: debootstrap not found (apt-get install debootstrap)" >&2
    exit 1
}
[ -e "/usr/share/debootstrap/scripts/$suite" ] || {
    echo "rootfs.sh: this debootstrap does not know $suite (a newer debootstrap does)" >&2
    exit 1
}
mirror=${SECURESOCK_DEBIAN_MIRROR:-$(apt_uri debian)}
[ -n "$mirror" ] || {
    echo "rootfs.sh: no Debian mirror (no URI ending in /debian) in this machine's apt sources; set SECURESOCK_DEBIAN_MIRROR" >&2
    exit 1
}
security=${SECURESOCK_DEBIAN_SECURITY_MIRROR:-$(apt_uri debian-security)}
security=${security:-${mirror%/debian}/debian-security}

# The key: everything that decides the root's contents. The package list is sorted so its order
# does not matter.
sorted=$(echo "$include" | tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -)
key=$({
    echo "recipe=$recipe suite=$suite mirror=$mirror security=$security include=$sorted"
    [ -z "$setup" ] || cat "$setup"
} | sha256sum | cut -c1-16)
root="$cache/$name-$suite-$key"

mkdir -p "$cache/debs" "$cache/archives/partial"
exec 9>"$cache/.lock"
flock 9
if [ -e "$root/.complete" ]; then
    echo "$root"
    exit 0
fi

echo "rootfs.sh: building $name root ($suite, include: ${sorted:-none}) in $root" >&2
start=$(date +%s)
tmp="$cache/.build-$name-$suite-$key"
rm -rf "$tmp"
set -- --variant=minbase --cache-dir="$cache/debs"
[ -z "$sorted" ] || set -- "$@" --include="$sorted"
# Its own mount namespace, so the /proc and /sys debootstrap mounts go away even if it fails.
if ! unshare --mount debootstrap "$@" "$suite" "$tmp" "$mirror" >"$cache/.build-$name-$suite.log" 2>&1; then
    tail -n 20 "$cache/.build-$name-$suite.log" >&2
    echo "rootfs.sh: debootstrap failed; whole log: $cache/.build-$name-$suite.log" >&2
    rm -rf "$tmp"
    exit 1
fi
# The same sources as the debian:<suite>-slim image, so apt sees the point and security updates.
rm -f "$tmp/etc/apt/sources.list"
cat >"$tmp/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
# Make the setup (e.g. the Dockerfile's RUN lines) inside the root, in a private mount namespace
# that ends with it. apt's downloads land in a shared cache so rebuilding is cheap.
if [ -n "$setup" ]; then
    cp /etc/resolv.conf "$tmp/etc/resolv.conf"
    # shellcheck disable=SC2016 # the inner shell expands its own arguments
    if ! unshare --mount sh -c '
        set -e
        mount -t proc proc "$1/proc"
        mount --rbind /dev "$1/dev"
        mount --bind "$2" "$1/var/cache/apt/archives"
        exec chroot "$1" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            DEBIAN_FRONTEND=noninteractive HOME=/root /bin/sh -ec "$3"
    ' sh "$tmp" "$cache/archives" "$(cat "$setup")" >>"$cache/.build-$name-$suite.log" 2>&1; then
        tail -n 20 "$cache/.build-$name-$suite.log" >&2
        echo "rootfs.sh: setup failed; whole log: $cache/.build-$name-$suite.log" >&2
        rm -rf "$tmp"
        exit 1
    fi
fi
touch "$tmp/.complete"
# Older roots of the same name and suite are stale now, and so are those from before roots were
# named after their suite (NAME-KEY).
for old in "$cache/$name-$suite"-???????????????? "$cache/$name"-????????????????; do
    [ "$old" = "$root" ] || [ ! -d "$old" ] || rm -rf "$old"
done
mv "$tmp" "$root"
echo "rootfs.sh: built $name root in $(($(date +%s) - start)) s" >&2
echo "$root"
