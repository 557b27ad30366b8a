#!/bin/bash
# Runs scripts/bench.sh inside a throw-away overlay of the cached debootstrap root of a Debian
# release (scripts/rootfs.sh), for `scripts/bench.sh --trixie`, which builds first and then
# execs this; never needed by hand.
#   scripts/bench-root.sh SUITE OUT BENCH-ARGUMENT...
# Private mount, pid and network namespaces (loopback only); the repository bind-mounted at its own
# path, so the host-built securesock and securesock-bench are found (and load the root's libssl)
# and BENCHMARKS.md is written; OUT, the report folder, bind-mounted likewise. Needs root.
set -eu
cd "$(dirname "$0")/.."
. scripts/common.sh
[ $# -ge 2 ] || { sed -n '5p' "$0" | sed 's/^#  *//' >&2; exit 2; }
suite=$1 out=$2; shift 2
[ "$(id -u)" -eq 0 ] || { echo "bench-root.sh: needs root (debootstrap, chroot, namespaces)" >&2; exit 1; }
export PATH="$PATH:/usr/sbin:/sbin"
need_packages debootstrap util-linux iproute2
root=$(scripts/rootfs.sh --name bench --suite "$suite" \
    --include nginx,libnginx-mod-stream,stunnel4,gnuplot-nox,openssl,ca-certificates,procps | tail -n 1)
ns=$(mktemp -d /tmp/securesock-bench-root.XXXXXX)
rc=0
# shellcheck disable=SC2016 # expanded by the inner shell
unshare --mount --pid --net --uts --fork bash -c '
    set -eu
    root=$1 work=$2 repo=$3 suite=$4 out=$5; shift 5
    mount -t tmpfs tmpfs "$work"
    mkdir "$work/upper" "$work/work" "$work/merged"
    m=$work/merged
    mount -t overlay overlay -o "lowerdir=$root,upperdir=$work/upper,workdir=$work/work" "$m"
    mkdir -p "$m$repo"
    mount --bind "$repo" "$m$repo"
    # The report directory, at the same path, so the run inside writes where the caller said.
    mkdir -p "$m$out"
    mount --bind "$out" "$m$out"
    mount -t proc proc "$m/proc"
    mount --rbind /dev "$m/dev"
    mount -t tmpfs -o mode=1777 tmpfs "$m/tmp"
    hostname "securesock-bench-$suite"
    ip link set lo up
    exec chroot "$m" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 SECURESOCK_BENCH_IN_ROOT="$suite" bash "$repo/scripts/bench.sh" "$@"
' bench-root "$root" "$ns" "$PWD" "$suite" "$out" "$@" --out "$out" || rc=$?
rmdir "$ns" 2>/dev/null || true
exit "$rc"
