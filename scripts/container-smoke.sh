#!/bin/bash
# Tests the container image's runtime stage without a container engine. It reads the Dockerfile's
# final stage (FROM, RUN, COPY, ENV, USER, ENTRYPOINT, HEALTHCHECK), so the test cannot drift from
# the image: a debootstrap root of the stage's release (cached, see scripts/rootfs.sh) stands in for
# its debian:<release>-slim, the stage's RUN lines run in it (so apt installs exactly its packages),
# the release binary and scripts are copied where its COPY lines put them, and the ENTRYPOINT runs as
# its USER, as PID 1 of private pid/net/mount/uts namespaces with its ENV. Then, from inside those
# namespaces: scripts/check.sh (openssl s_client), the HEALTHCHECK command, the image's own
# `openssl s_client -groups X25519MLKEM768` (the handshake must use the post-quantum hybrid, which
# trixie's OpenSSL 3.5 has), and SIGTERM (drain, exit 0).
# Runs: mounted certificates; none (the entrypoint must make a self-signed pair); none with
# SECURESOCK_SELF_SIGNED=never (it must refuse, exit 2).
#
#   scripts/container-smoke.sh [--without PKG]...
#
# --without PKG removes that package (dpkg --force-depends) from the root before the runs, to prove
# the test fails when the image lacks something: e.g. --without libssl3t64 must fail.
# Needs root, debootstrap, util-linux; builds target/release/securesock with cargo when needed.
set -euo pipefail
cd "$(dirname "$0")/.."

without=()
while [ $# -gt 0 ]; do
    case "$1" in
        --without) [ $# -ge 2 ] || { echo "container-smoke.sh: --without needs a package" >&2; exit 2; }; without+=("$2"); shift 2 ;;
        -h|--help) sed -n '12p' "$0" | sed 's/^#  *//'; exit 0 ;;
        *) echo "container-smoke.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
[ "$(id -u)" -eq 0 ] || fail "needs root (chroot, namespaces, mounts)"

# ---- Read the Dockerfile's final stage -------------------------------------------------------
# Continuation lines joined, comment lines dropped, as docker reads them.
mapfile -t instructions < <(awk '
    /^[[:space:]]*#/ { next }
    { if (sub(/\\[[:space:]]*$/, "")) { buf = buf $0 " "; next } line = buf $0; buf = "" }
    line ~ /[^[:space:]]/ { print line }' Dockerfile)
base="" user="" healthcheck="" entrypoint=""
runs=() copies=() envs=()
for line in "${instructions[@]}"; do
    word=${line%%[[:space:]]*}
    rest=${line#"$word"}
    rest=${rest#"${rest%%[![:space:]]*}"}
    case "${word^^}" in
        FROM) base=${rest%%[[:space:]]*}; user="" healthcheck="" entrypoint=""; runs=() copies=() envs=() ;;
        RUN) runs+=("$rest") ;;
        COPY) copies+=("$rest") ;;
        ENV) read -r -a kv <<<"$rest"; envs+=("${kv[@]}") ;;
        USER) user=$rest ;;
        HEALTHCHECK) healthcheck=$rest ;;
        ENTRYPOINT) entrypoint=$rest ;;
    esac
done

# An exec-form array, ["a", "b"], one element a line. Only plain elements (no escapes or commas).
exec_form() {
    local s=$1
    [[ $s =~ ^\[(.*)\]$ ]] || fail "Dockerfile: expected an exec-form [\"...\"] array, got: $s"
    echo "${BASH_REMATCH[1]}" | tr ',' '\n' | sed 's/^[[:space:]]*"//; s/"[[:space:]]*$//'
}

# The releases scripts/rootfs.sh can make a root of.
case "$base" in
    debian:bookworm-slim|debian:trixie-slim) suite=${base#debian:}; suite=${suite%-slim} ;;
    *) fail "Dockerfile: the runtime stage is FROM $base; this stand-in debootstraps only debian:bookworm-slim and debian:trixie-slim (change both together)" ;;
esac
[[ $user =~ ^([1-9][0-9]*):([1-9][0-9]*)$ ]] || fail "Dockerfile: USER must be numeric and not root (UID:GID), got '$user'"
uid=${BASH_REMATCH[1]} gid=${BASH_REMATCH[2]}
[[ $healthcheck =~ CMD[[:space:]]+(\[.*\])$ ]] || fail "Dockerfile: HEALTHCHECK must use exec-form CMD [...]"
mapfile -t health_cmd < <(exec_form "${BASH_REMATCH[1]}")
mapfile -t entry_cmd < <(exec_form "$entrypoint")
[ "${#entry_cmd[@]}" -gt 0 ] || fail "Dockerfile: no exec-form ENTRYPOINT in the runtime stage"
for kv in "${envs[@]}"; do
    [[ $kv =~ ^[A-Z_][A-Z0-9_]*=[^\"\']*$ ]] || fail "Dockerfile: ENV entries must be KEY=value without quotes, got '$kv'"
done
# The packages of the stage's apt-get install: the words after `install` up to the next && or ;.
packages=$(printf '%s\n' "${runs[@]}" | grep -o 'apt-get install[^&;]*' | sed 's/^apt-get install//' |
    tr ' ' '\n' | grep -v '^-' | sed '/^$/d' | sort -u | paste -sd' ' -)
[ -n "$packages" ] || fail "Dockerfile: the runtime stage installs no packages with apt-get install"
for pkg in "${without[@]}"; do
    case " $packages " in
        *" $pkg "*) ;;
        *) fail "--without $pkg: not one of the runtime stage's packages ($packages)" ;;
    esac
done

echo "== container smoke: runtime stage FROM $base, USER $uid:$gid, packages: $packages"
[ "${#without[@]}" -eq 0 ] || echo "   removing on purpose: ${without[*]} (this run must fail)"

# ---- The root filesystem, the binary, the files to copy in -----------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
. scripts/common.sh
need_packages debootstrap util-linux iproute2 openssl
tmp=$(mktemp -d)
started=()
cleanup() {
    local pid child
    for pid in "${started[@]}"; do
        # The namespace's PID 1 first: killing unshare alone would leave it running (the parent-death
        # signal does not survive the switch to the image's user). Its death ends the namespace.
        # unshare then reaps it and exits; only without a child yet is unshare itself killed.
        child=$(pgrep -P "$pid" || true)
        if [ -n "$child" ]; then
            kill -KILL "$child" 2>/dev/null || true
        else
            kill -KILL "$pid" 2>/dev/null || true
        fi
        # wait quietly: otherwise bash reports the killed job with its whole command line.
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

printf '%s\n' "${runs[@]}" >"$tmp/setup.sh"
root=$(scripts/rootfs.sh --name runtime --suite "$suite" --setup "$tmp/setup.sh" | tail -n 1)
cargo build --release --locked --quiet --bin securesock

# COPY lines as "host-path<TAB>image-path", one a line. --from=builder sources come from our own
# release build: the builder stage installs target/release/securesock as /out/securesock.
: >"$tmp/copies"
for c in "${copies[@]}"; do
    read -r -a words <<<"$c"
    from=""
    args=()
    for w in "${words[@]}"; do
        case "$w" in
            --from=*) from=${w#--from=} ;;
            --chmod=*|--chown=*|--link) ;;
            --*) fail "Dockerfile: COPY option $w is not understood by this test" ;;
            *) args+=("$w") ;;
        esac
    done
    dest=${args[-1]}
    unset 'args[-1]'
    for src in "${args[@]}"; do
        if [ -n "$from" ]; then
            if [ "$from" != builder ] || [ "${src#/out/}" = "$src" ]; then
                fail "Dockerfile: COPY --from=$from $src: only --from=builder /out/... is known here"
            fi
            host="target/release/${src#/out/}"
        else
            host=$src
        fi
        [ -f "$host" ] || fail "Dockerfile: COPY source $host does not exist"
        case "$dest" in
            */) printf '%s\t%s\n' "$host" "$dest$(basename "$src")" >>"$tmp/copies" ;;
            *) printf '%s\t%s\n' "$host" "$dest" >>"$tmp/copies" ;;
        esac
    done
done

# ---- Running the "container" -----------------------------------------------------------------
# Extra KEY=value settings for the next start_container, like `docker run -e`.
extra_env=()

# start_container NAME [CERTDIR]: runs the ENTRYPOINT as PID 1 of new pid/net/mount/uts namespaces,
# in an overlay of the cached root (so every run starts from the image as built), with CERTDIR
# bind-mounted read-only at /certs like `docker run -v DIR:/certs:ro`. Sets $unshare_pid.
start_container() {
    local name=$1 certs=${2:-}
    mkdir -p "$tmp/$name"
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --pid --net --mount --uts --fork bash -c '
        set -euo pipefail
        root=$1 work=$2 copies=$3 certs=$4 uid=$5 gid=$6 without=$7; shift 7
        mount -t tmpfs tmpfs "$work"
        mkdir "$work/upper" "$work/work" "$work/merged"
        m=$work/merged
        mount -t overlay overlay -o "lowerdir=$root,upperdir=$work/upper,workdir=$work/work" "$m"
        while IFS="	" read -r host path; do
            install -D -m 0755 "$host" "$m$path"
        done <"$copies"
        for pkg in $without; do
            chroot "$m" dpkg --purge --force-depends "$pkg" >/dev/null 2>&1
        done
        [ -z "$certs" ] || mount --bind -o ro "$certs" "$m/certs"
        mount -t proc proc "$m/proc"
        mount -t tmpfs -o mode=0755 tmpfs "$m/dev"
        for d in null zero full random urandom tty; do
            touch "$m/dev/$d"
            mount --bind "/dev/$d" "$m/dev/$d"
        done
        mount -t tmpfs -o mode=1777 tmpfs "$m/tmp"
        hostname securesock-smoke
        ip link set lo up
        exec chroot --userspec="$uid:$gid" "$m" "$@"
    ' container "$root" "$tmp/$name" "$tmp/copies" "$certs" "$uid" "$gid" "${without[*]}" \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/ \
        HOSTNAME=securesock-smoke "${envs[@]}" "${extra_env[@]}" "${entry_cmd[@]}" \
        </dev/null >"$tmp/$name.log" 2>&1 &
    unshare_pid=$!
    started+=("$unshare_pid")
}

# pid1_of: the host PID of the namespace's PID 1 (the child unshare forked).
pid1_of() {
    local parent=$1 deadline=$((SECONDS + 10)) child
    while [ $SECONDS -lt $deadline ]; do
        child=$(pgrep -P "$parent" | head -n 1) && [ -n "$child" ] && { echo "$child"; return 0; }
        kill -0 "$parent" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# wait_for_log NAME TEXT: waits (20 s at most) for TEXT in the container's log; fails if it exits.
wait_for_log() {
    local name=$1 text=$2 deadline=$((SECONDS + 20))
    while ! grep -qF -- "$text" "$tmp/$name.log"; do
        if ! kill -0 "$unshare_pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
            sed 's/^/  container: /' "$tmp/$name.log" >&2
            fail "$name: no '$text' in the container's log"
        fi
        sleep 0.05
    done
}

# inside PID1 CMD...: runs CMD in the container's namespaces and root, as its USER, with its ENV,
# the way `docker exec` and docker's health checks do.
inside() {
    local pid1=$1
    shift
    timeout 20 nsenter -t "$pid1" -m -u -n -p -r -w -S "$uid" -G "$gid" -- \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/ "${envs[@]}" "$@"
}

# scenario NAME [CERTDIR]: start, check as a client would, health-check, SIGTERM.
scenario() {
    local name=$1 certs=${2:-} pid1 rc status
    echo "-- $name: starting ${entry_cmd[*]} as $uid:$gid, PID 1 of new pid/net/mount/uts namespaces"
    start_container "$name" "$certs"
    pid1=$(pid1_of "$unshare_pid") || { cat "$tmp/$name.log" >&2; fail "$name: the container did not start"; }
    wait_for_log "$name" "listening on"

    status=/proc/$pid1/status
    [ "$(basename "$(readlink "/proc/$pid1/exe")")" = securesock ] ||
        fail "$name: PID 1 is $(readlink "/proc/$pid1/exe"), not securesock (the entrypoint must exec it)"
    [ "$(awk '/^NSpid:/ { print $NF }' "$status")" = 1 ] || fail "$name: securesock is not PID 1 of its namespace"
    [ "$(awk '/^Uid:/ { print $2 $3 $4 $5 }' "$status")" = "$uid$uid$uid$uid" ] || fail "$name: not running as UID $uid"
    [ "$(awk '/^Gid:/ { print $2 $3 $4 $5 }' "$status")" = "$gid$gid$gid$gid" ] || fail "$name: not running as GID $gid"
    [ -z "$(awk '/^Groups:/ { $1 = ""; print }' "$status" | tr -d ' ')" ] || fail "$name: has supplementary groups"
    [ "$(awk '/^CapEff:/ { print $2 }' "$status")" = 0000000000000000 ] || fail "$name: has capabilities"
    echo "   PID 1 is securesock, uid=$uid gid=$gid, no supplementary groups, no capabilities"

    if [ -z "$certs" ]; then
        grep -q "making a SELF-SIGNED pair" "$tmp/$name.log" || fail "$name: the entrypoint did not say loudly that it made a self-signed pair"
        [ "$(inside "$pid1" stat -c '%u:%g %a' /certs/server-key.pem)" = "$uid:$gid 600" ] ||
            fail "$name: the generated key is not $uid:$gid mode 600"
        echo "   entrypoint made a self-signed pair in /certs (key $uid:$gid 0600)"
    else
        ! grep -q "SELF-SIGNED" "$tmp/$name.log" || fail "$name: the entrypoint made a pair although one was mounted"
    fi

    inside "$pid1" /usr/local/bin/check.sh 127.0.0.1:12345 --ca /certs/server-cert.pem | sed 's/^/   check.sh: /' ||
        fail "$name: scripts/check.sh failed inside the container"
    inside "$pid1" "${health_cmd[@]}" | sed 's/^/   HEALTHCHECK: /' || fail "$name: the HEALTHCHECK command failed"

    # The image's own s_client offering only the post-quantum hybrid: the server must pick it (a
    # server without it would fail the handshake, or, were X25519 offered too, fall back silently).
    inside "$pid1" openssl s_client -connect 127.0.0.1:12345 -groups X25519MLKEM768 \
        -CAfile /certs/server-cert.pem -verify_return_error -brief </dev/null >"$tmp/$name.pq" 2>&1 || true
    if ! grep -qx "Negotiated TLS1.3 group: X25519MLKEM768" "$tmp/$name.pq"; then
        sed 's/^/  s_client: /' "$tmp/$name.pq" >&2
        fail "$name: the handshake did not use X25519MLKEM768 ($(inside "$pid1" openssl version))"
    fi
    echo "   $(inside "$pid1" openssl version | cut -d' ' -f1-2) s_client -groups X25519MLKEM768: Negotiated TLS1.3 group: X25519MLKEM768"

    kill -TERM "$pid1"
    rc=0
    wait "$unshare_pid" || rc=$?
    grep -q "drained" "$tmp/$name.log" || { cat "$tmp/$name.log" >&2; fail "$name: no drain after SIGTERM"; }
    [ "$rc" -eq 0 ] || { cat "$tmp/$name.log" >&2; fail "$name: exit status $rc after SIGTERM, expected 0"; }
    echo "   SIGTERM to PID 1: drained, exit 0"
}

start=$SECONDS
# Mounted certificates first: the server then starts without the openssl CLI, so a missing library
# shows up as the binary's own loader error.
mkdir -p "$tmp/certs"
scripts/gen-certs.sh --out "$tmp/certs" >/dev/null
chown -R "$uid:$gid" "$tmp/certs"
scenario mounted-certs "$tmp/certs"
scenario generated-certs

# SECURESOCK_SELF_SIGNED=never: no mounted pair must mean no start (exit 2), not a self-signed pair.
echo "-- refuse-self-signed: SECURESOCK_SELF_SIGNED=never and nothing mounted"
extra_env=(SECURESOCK_SELF_SIGNED=never)
start_container refuse-self-signed
rc=0
timeout 20 tail --pid="$unshare_pid" -f /dev/null || fail "refuse-self-signed: still running"
wait "$unshare_pid" || rc=$?
[ "$rc" -eq 2 ] || { cat "$tmp/refuse-self-signed.log" >&2; fail "refuse-self-signed: exit $rc, expected 2"; }
grep -q "SECURESOCK_SELF_SIGNED=never" "$tmp/refuse-self-signed.log" || fail "refuse-self-signed: no message saying why"
! grep -q "SELF-SIGNED pair" "$tmp/refuse-self-signed.log" || fail "refuse-self-signed: made a pair anyway"
echo "   exit 2: $(head -n 1 "$tmp/refuse-self-signed.log")"
echo "container smoke: OK ($((SECONDS - start)) s)"
