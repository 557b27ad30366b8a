#!/bin/bash
# Benchmarks securesock against nginx (stream module) and stunnel on loopback, same certificate,
# same Mozilla intermediate v6.0 settings, driven by securesock-bench, and writes a report.
#
#   scripts/bench.sh [--quick] [--throughput] [--forward] [--client] [--idle-memory] [--established [N]] [--soak [N]] [--all] [--trixie] [--rounds N] [--duration SECS] [--out DIR] [--write]
#
# Sections (default: --throughput):
#   --throughput   full and resumed handshakes at 1, 16 and 64 clients, peers in alternating rounds;
#                  medians of conns/s, p50/p99, server CPU per connection, peak RSS; a PNG chart
#   --forward      forward mode: one connection moving 512 MiB up, then 512 MiB down, through
#                  securesock --mode forward, nginx stream proxy_pass and stunnel to a plaintext
#                  upstream (examples/bulk.rs), for every pairing of client and upstream read/write
#                  size {256 KiB, 16 KiB}; MB/s and server CPU s/GiB, medians over the rounds
#   --client       client mode: plaintext connections (securesock-bench --plaintext) through securesock
#                  --mode client and stunnel client = yes to a TLS greet upstream, full handshakes (an
#                  upstream without resumption) and resumed ones; conns/s, p99, CPU per connection
#   --idle-memory  securesock's RSS before and with 5,000 idle connections, the burst's accept time,
#                  the same for nginx, and whether a client from 127.0.0.2 is still served in 50 ms
#   --established [N]
#                  memory per established, idle connection: N (default 5,000) TLS clients that each
#                  send 16 bytes through a forwarder to a plaintext echo upstream, read them back and
#                  stay open; securesock --mode forward, nginx stream proxy_pass (1 worker) and
#                  stunnel in alternating rounds, RSS and kernel memory per connection (medians);
#                  then 19,000 such clients against securesock --mode echo and 9,000 against
#                  --mode forward, each with a client from 127.0.0.2 timed while they are held
#   --soak [N]     N connections (default 1,000,000) against securesock: failures, RSS, open fds at
#                  start, middle and end
#   --all          throughput, forward, client and idle-memory (not soak or established)
#   --trixie       run inside a cached debootstrap trixie root (scripts/rootfs.sh): OpenSSL 3.5 and
#                  X25519MLKEM768, trixie's nginx; the host-built securesock and securesock-bench
#                  load the root's libssl there. Throughput then compares securesock with nginx only,
#                  at 16 and 64 clients, and writes its own section (throughput-trixie)
# --quick    a smoke test of the chosen sections (still only throughput by default), not figures
#            to publish: 1 round of 1 s runs at 1 and 16 clients, 64 MiB transfers, 200 idle
#            connections, a 2,000-connection soak. On the shared 2-core box `--quick` ran 24 s and
#            `--quick --all` 33 s once the packages and release binaries were there; the first run
#            on a fresh machine took 3 min 6 s in all, installing and building.
# --out DIR  where the report goes: DIR/BENCHMARKS.md with the sections run, and for throughput
#            DIR/docs/bench-throughput.png (default: a new /tmp/securesock-bench-report.XXXXXX,
#            named at the end). Nothing in the working tree changes.
# --write    also replace those sections of the tracked BENCHMARKS.md and docs/bench-throughput.png:
#            `scripts/bench.sh --all --write` for the published figures. Refused with --quick.
# Installs nginx, libnginx-mod-stream, stunnel4 and gnuplot-nox when missing. All traffic stays
# on 127.0.0.1 (and 127.0.0.2 as a second client). This script only orchestrates: the peers'
# configurations are the templates in bench/peers/, and the /proc sampling, the medians and the
# report are `securesock-bench sample|measure|record|report|publish|machine` (bench/src/, unit-tested).
set -eu
# A relative --out is relative to where the script was started, not to the repository.
started_in=$PWD
cd "$(dirname "$0")/.."
. scripts/common.sh

usage() {
    sed -n '5p' "$0" | sed 's/^#  *//' >&2
}

# Recorded before the options are consumed, for the "command" line of each section.
command_line="scripts/bench.sh${*:+ $*}"
# And kept whole for the run inside a root (--trixie), which parses them again.
all_args=("$@")
quick=0 rounds=3 duration=5 write=0 out="" sections="" soak_n=1000000 established_n=5000
# The tens-of-thousands runs of --established: echo mode takes one descriptor per connection and
# forward mode two, under a hard limit of 20,000 open files per process on the box this was
# written for.
established_echo=19000 established_fwd=9000
# The Debian release whose root the run happens in (--trixie); empty: this machine as it is.
suite=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; shift ;;
        --throughput) sections="$sections throughput"; shift ;;
        --forward) sections="$sections forward"; shift ;;
        --client) sections="$sections client"; shift ;;
        --idle-memory) sections="$sections idle"; shift ;;
        --established)
            sections="$sections established"; shift
            case "${1:-}" in ''|-*) ;; *) established_n=$1; shift ;; esac ;;
        --soak)
            sections="$sections soak"; shift
            case "${1:-}" in ''|-*) ;; *) soak_n=$1; shift ;; esac ;;
        --all) sections="$sections throughput forward client idle"; shift ;;
        --rounds) [ $# -ge 2 ] || { usage; exit 2; }; rounds=$2; shift 2 ;;
        --duration) [ $# -ge 2 ] || { usage; exit 2; }; duration=$2; shift 2 ;;
        --out) [ $# -ge 2 ] || { usage; exit 2; }; out=$2; shift 2 ;;
        --write) write=1; shift ;;
        --trixie) suite=trixie; shift ;;
        # The header comment, up to the first line that is not one.
        -h|--help) sed -n '1d; /^#/!q; s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument '$1'" >&2; usage; exit 2 ;;
    esac
done
[ -n "$sections" ] || sections=throughput
for v in "$rounds" "$soak_n" "$established_n"; do
    case "$v" in ''|*[!0-9]*|0) echo "bench.sh: --rounds, --soak and --established need a positive whole number, got '$v'" >&2; exit 2 ;; esac
done
case "$duration" in ''|*[!0-9.]*) echo "bench.sh: --duration needs seconds, got '$duration'" >&2; exit 2 ;; esac
if [ "$quick" -eq 1 ] && [ "$write" -eq 1 ]; then
    echo "bench.sh: --write replaces the published figures, which a --quick run's are not; drop one of them" >&2
    exit 2
fi
case "$out" in
    '') out=$(mktemp -d /tmp/securesock-bench-report.XXXXXX) ;;
    /*) ;;
    *) out=$started_in/$out ;;
esac
mkdir -p "$out/docs"
report=$out/BENCHMARKS.md
printf '%s\n\n%s\n' "# Benchmarks: report of \`$command_line\`" \
    "Written by \`scripts/bench.sh\` on $(date -u +%Y-%m-%dT%H:%MZ)$([ "$quick" -eq 1 ] && echo ': a --quick smoke run, not figures to publish')." >"$report"

concurrencies="1 16 64"
peers="securesock nginx nginx-1w stunnel"
# Where the results go in BENCHMARKS.md: one section per kind of run, so a run on another release
# does not replace this machine's figures.
section_suffix=""
if [ -n "$suite" ]; then
    concurrencies="16 64" peers="securesock nginx" section_suffix="-$suite"
fi
idle_k=5000
# 512 MiB per transfer: 4 chunk pairings x 2 directions x 3 forwarders per round keep a 3-round
# run to a few minutes, and a transfer still lasts long enough (~0.5 s) for the CPU ticks to count.
bulk_bytes=$((512 * 1024 * 1024))
# Client and upstream read/write sizes in forward mode, every pairing measured: 256 KiB suits a
# forwarder (few large records), 16 KiB is what many clients and servers use (one TLS record each).
bulk_chunks="262144 16384"
if [ "$quick" -eq 1 ]; then
    bulk_bytes=$((64 * 1024 * 1024)) rounds=1 duration=1 concurrencies="1 16" idle_k=200
    [ "$soak_n" -eq 1000000 ] && soak_n=2000
    [ "$established_n" -eq 5000 ] && established_n=200
    established_echo=600 established_fwd=300
fi

bench_build() {
    cargo build --release --locked --quiet -p securesock --bin securesock \
        -p securesock-bench --bin securesock-bench --example plain-greeter --example bulk \
        --example echo-upstream
}
if [ -n "$suite" ] && [ "${SECURESOCK_BENCH_IN_ROOT:-}" != "$suite" ]; then
    # Build here, then run this same script inside the root: private mount, pid and network
    # namespaces (loopback only), a throw-away overlay of the cached root, the repository
    # bind-mounted at its own path so the binaries are found and BENCHMARKS.md is written.
    [ "$(id -u)" -eq 0 ] || { echo "bench.sh: --$suite needs root (debootstrap, chroot, namespaces)" >&2; exit 1; }
    export PATH="$PATH:/usr/sbin:/sbin"
    need_packages debootstrap util-linux iproute2 openssl libssl-dev pkg-config gcc libc6-dev
    need_cargo
    echo "== building (release)" >&2
    bench_build
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
        # The report directory, at the same path, so the run inside writes where this one said.
        mkdir -p "$m$out"
        mount --bind "$out" "$m$out"
        mount -t proc proc "$m/proc"
        mount --rbind /dev "$m/dev"
        mount -t tmpfs -o mode=1777 tmpfs "$m/tmp"
        hostname "securesock-bench-$suite"
        ip link set lo up
        exec chroot "$m" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            HOME=/root LANG=C.UTF-8 SECURESOCK_BENCH_IN_ROOT="$suite" bash "$repo/scripts/bench.sh" "$@"
    ' bench-root "$root" "$ns" "$PWD" "$suite" "$out" "${all_args[@]}" --out "$out" || rc=$?
    rmdir "$ns" 2>/dev/null || true
    exit "$rc"
fi

if [ -n "$suite" ]; then
    # Inside the root: its packages were installed when it was made, and it has no toolchain.
    need_packages nginx libnginx-mod-stream stunnel4 gnuplot-nox
else
    need_packages openssl libssl-dev pkg-config gcc libc6-dev ca-certificates \
        nginx libnginx-mod-stream stunnel4 gnuplot-nox
    need_cargo
fi

# Many sockets at once (5,000 idle on each side, plus the servers' own): raise the descriptor limit
# for this shell and everything it starts.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [ -z "$suite" ]; then
    echo "== building (release)" >&2
    bench_build
fi
bin=$PWD/target/release
# The runs' own time, without package installs and the build.
t_start=$(date +%s)
bench=$bin/securesock-bench

work=$(mktemp -d /tmp/securesock-bench.XXXXXX)
started_pids=""
cleanup() {
    # Only the processes this script started, by PID.
    for p in $started_pids; do kill "$p" 2>/dev/null || true; done
    for p in $started_pids; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scripts/gen-certs.sh --out "$work/certs" >/dev/null
cert=$work/certs/server-cert.pem
key=$work/certs/server-key.pem

# Mozilla intermediate v6.0, as securesock applies it (src/tls/profile.rs), for the peers' configurations.
tls12_ciphers="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
tls13_suites="TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
# securesock puts the post-quantum hybrid first when libssl has it (3.5+); the peers get the same.
if openssl list -kem-algorithms 2>/dev/null | grep -q X25519MLKEM768; then
    groups="X25519MLKEM768:X25519:prime256v1:secp384r1"
else
    groups="X25519:prime256v1:secp384r1"
fi
greeting="Hello, secure world!"
# Long enough that idle connections outlive any section; throughput is not affected by it.
handshake_timeout=300
# The most connections one load-generator process holds: each is a descriptor, under the box's
# hard limit of 20,000 open files per process.
per_holder=9500

# fill TEMPLATE OUT KEY=VALUE...: a peer's configuration from bench/peers/TEMPLATE, every @KEY@
# replaced (the TLS settings and the certificate always); refuses to leave a placeholder unfilled.
fill() {
    template=bench/peers/$1 dest=$2; shift 2
    script=""
    for kv in CERT="$cert" KEY="$key" GROUPS="$groups" TLS12_CIPHERS="$tls12_ciphers" \
        TLS13_SUITES="$tls13_suites" HANDSHAKE_TIMEOUT="$handshake_timeout" "$@"; do
        value=$(printf '%s' "${kv#*=}" | sed 's/[&|\\]/\\&/g')
        script="$script s|@${kv%%=*}@|$value|g;"
    done
    sed "$script" "$template" >"$dest"
    if grep -n '@[A-Z0-9_]*@' "$dest" >&2; then
        echo "bench.sh: $template: placeholders left unfilled in $dest" >&2
        return 1
    fi
}

# A free loopback port, from a fixed range so nothing else on the box is disturbed.
next_port=24400
free_port() {
    while (exec 3<>"/dev/tcp/127.0.0.1/$next_port") 2>/dev/null; do
        next_port=$((next_port + 1))
    done
    port=$next_port
    next_port=$((next_port + 1))
}

# wait_for CMD...: runs CMD every 50 ms until it succeeds, for at most 20 s ($wait_tries x 50 ms).
wait_tries=400
wait_for() {
    tries=$wait_tries
    until "$@"; do
        tries=$((tries - 1))
        if [ "$tries" -le 0 ]; then
            echo "bench.sh: timed out waiting for: $*" >&2
            return 1
        fi
        sleep 0.05
    done
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
logged_listening() { grep -q "listening on" "$1" 2>/dev/null; }
# started CMD...: runs CMD in the background, remembered for the clean-up; sets $bg.
started() {
    "$@" &
    bg=$!
    started_pids="$started_pids $bg"
}

# Servers: each start_* sets $pid (the process to stop) and $port.
# start_listening LOG CMD...: a program that logs "listening on 127.0.0.1:PORT" (securesock, the
# examples); its log is emptied first, so an earlier round's under the same name is never read.
start_listening() {
    log=$1; shift
    : >"$log"
    started "$@" 2>"$log"
    pid=$bg
    wait_for logged_listening "$log"
    port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -n 1)
}
# $securesock_env, when set (VAR=VALUE), is put in securesock's environment.
start_securesock() { # NAME EXTRA-FLAGS...
    name=$1; shift
    start_listening "$work/$name.log" env ${securesock_env:+"$securesock_env"} "$bin/securesock" \
        --listen 127.0.0.1:0 --cert "$cert" --key "$key" --handshake-timeout "$handshake_timeout" "$@"
}
start_nginx() { # NAME WORKERS [UPSTREAM-PORT]
    # Greet with `return`, or forward to a plaintext upstream (half-close on, as a TLS front for
    # a request/response protocol needs).
    body="return \"$greeting\";"
    [ -z "${3:-}" ] || body="proxy_pass 127.0.0.1:$3; proxy_half_close on;"
    free_port
    mkdir -p "$work/$1"
    fill nginx.conf.in "$work/$1/nginx.conf" WORKERS="$2" DIR="$work/$1" PORT="$port" BODY="$body" \
        SESSION_CACHE="${nginx_session_cache:-shared:MozSSL:10m}"
    started nginx -e "$work/$1/error.log" -p "$work/$1" -c "$work/$1/nginx.conf"
    pid=$bg
    wait_for port_open "$port"
}
start_stunnel() { # NAME [UPSTREAM-PORT [TEMPLATE]]; without a port, in front of its own greeter
    if [ -n "${2:-}" ]; then
        upstream=$2
    else
        start_listening "$work/greeter.log" "$bin/examples/plain-greeter" 127.0.0.1:0 "$greeting"
        greeter_pid=$pid upstream=$port
    fi
    free_port
    fill "${3:-stunnel-server.conf.in}" "$work/$1.conf" LOG="$work/$1.log" PORT="$port" UPSTREAM_PORT="$upstream"
    started stunnel "$work/$1.conf"
    pid=$bg
    wait_for port_open "$port"
}
stop() { # PID
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

load() { cut -d' ' -f1-3 /proc/loadavg; }

# What every section's report knows: the run's settings, then the machine and versions.
printf '%s\n' "command=$command_line" "rounds=$rounds" "duration=$duration" "nproc=$(nproc)" \
    "groups=$groups" "suite=$suite" "openssl=$(openssl version)" "idle_k=$idle_k" \
    "handshake_timeout=$handshake_timeout" "bulk_bytes=$bulk_bytes" "soak_n=$soak_n" \
    "per_holder=$per_holder" >"$work/facts"
"$bench" machine --suite "$suite" --nproc "$(nproc)" --groups "$groups" --securesock "$bin/securesock" \
    >"$work/versions.md"

# publish SECTION NAME REPORT-OPTION...: the section's markdown from $work/SECTION.jsonl, added as
# NAME to the report, and with --write to the tracked BENCHMARKS.md.
publish() {
    sec=$1 name=$2 md=$work/$1.md; shift 2
    "$bench" report "$sec" --facts "$work/facts" --versions "$work/versions.md" \
        --results "$work/$sec.jsonl" --out "$md" "$@"
    cat "$md"
    "$bench" publish --into "$report" --section "$name" --from "$md"
    [ "$write" -eq 0 ] || "$bench" publish --into BENCHMARKS.md --section "$name" --from "$md"
}

# ---------------------------------------------------------------------------------------------
throughput() {
    echo "== throughput: $rounds round(s) x clients {$concurrencies} x {full, resumed}, ${duration}s each" >&2
    declare -A pids ports
    for s in $peers; do
        case "$s" in
            securesock) start_securesock securesock ;;
            nginx) start_nginx nginx 2 ;;
            nginx-1w) start_nginx nginx-1w 1 ;;
            stunnel) start_stunnel stunnel ;;
        esac
        pids[$s]=$pid ports[$s]=$port
    done
    # Each peer must pass the same check before it is measured. Where the groups start with the
    # post-quantum hybrid, each must also negotiate it with a client on the library's default
    # groups, as securesock-bench's are.
    for s in $peers; do
        "$bench" "127.0.0.1:${ports[$s]}" --ca "$cert" -n 3 --json >"$work/check.json" ||
            { echo "bench.sh: $s fails the greeting check:" >&2; cat "$work/check.json" >&2; exit 1; }
        case "$groups" in
            X25519MLKEM768:*)
                got=$(openssl s_client -connect "127.0.0.1:${ports[$s]}" -brief </dev/null 2>&1 |
                    sed -n 's/^Negotiated TLS1.3 group: //p')
                [ "$got" = X25519MLKEM768 ] || { echo "bench.sh: $s negotiates '${got:-no KEM group}', not X25519MLKEM768" >&2; exit 1; } ;;
        esac
    done
    : >"$work/throughput.jsonl" && : >"$work/hwm.jsonl"
    # Other jobs on the box move every figure: the run says how busy the box was around it.
    load_start=$(load)
    for round in $(seq 1 "$rounds"); do
        for c in $concurrencies; do
            for flag in "" --resume; do
                # Alternate the peers within each cell so drift (thermal, noisy neighbours) hits all.
                for s in $peers; do
                    "$bench" measure --section throughput --pid "${pids[$s]}" --set "server=$s" \
                        --set "round=$round" --out "$work/throughput.jsonl" -- \
                        "$bench" "127.0.0.1:${ports[$s]}" --insecure -c "$c" -d "$duration" ${flag:+"$flag"} --json
                done
            done
        done
    done
    load_end=$(load)
    for s in $peers; do "$bench" sample --pid "${pids[$s]}" --set server="$s" --out "$work/hwm.jsonl"; done
    for s in $peers; do stop "${pids[$s]}"; done
    # The plain greeter behind stunnel, when stunnel was a peer.
    [ -z "${greeter_pid:-}" ] || stop "$greeter_pid"
    publish throughput "throughput$section_suffix" --hwm "$work/hwm.jsonl" --plot "$work" \
        --fact "servers=$peers" --fact "load_start=$load_start" --fact "load_end=$load_end"
    gnuplot "$work/chart.gp"
    # The section links docs/bench-throughput.png, which resolves beside either BENCHMARKS.md.
    cp "$work/chart.png" "$out/docs/bench-throughput$section_suffix.png"
    if [ "$write" -eq 1 ]; then
        mkdir -p docs
        cp "$work/chart.png" "docs/bench-throughput$section_suffix.png"
    fi
}

# ---------------------------------------------------------------------------------------------
# forward: one TLS connection moving $bulk_bytes up, then down, through each forwarder to the
# plaintext upstream of examples/bulk.rs; MB/s as the client sees it, server CPU per GiB.
forward() {
    echo "== forward: $rounds round(s) x client chunk {$bulk_chunks} x upstream chunk {$bulk_chunks} x {up, down} x 1 connection of $bulk_bytes bytes" >&2
    start_listening "$work/bulk-upstream.log" "$bin/examples/bulk" upstream 127.0.0.1:0
    up_pid=$pid up_port=$port
    # Kernel TLS needs the kernel's `tls` upper-layer protocol and a libssl built with KTLS.
    ktls=$("$bench" machine --ktls)
    declare -A pids ports
    start_securesock securesock-fwd --mode forward --upstream "127.0.0.1:$up_port"; pids[securesock]=$pid ports[securesock]=$port
    start_nginx nginx-fwd 2 "$up_port"; pids[nginx]=$pid ports[nginx]=$port
    start_stunnel stunnel-fwd "$up_port"; pids[stunnel]=$pid ports[stunnel]=$port
    : >"$work/forward.jsonl"
    # The box is shared: the load says how far to trust the figures.
    load_before=$(load)
    echo "  load average (1, 5, 15 min) before: $load_before" >&2
    for round in $(seq 1 "$rounds"); do
        for cc in $bulk_chunks; do
            for uc in $bulk_chunks; do
                for dir in up down; do
                    for s in securesock nginx stunnel; do
                        "$bench" measure --section forward --pid "${pids[$s]}" --set "server=$s" \
                            --set "round=$round" --out "$work/forward.jsonl" -- "$bin/examples/bulk" "$dir" "127.0.0.1:${ports[$s]}" "$bulk_bytes" "$cc" "$uc"
                    done
                done
            done
        done
    done
    load_after=$(load)
    echo "  load average (1, 5, 15 min) after: $load_after" >&2
    for s in securesock nginx stunnel; do stop "${pids[$s]}"; done
    stop "$up_pid"
    publish forward forward --fact "ktls=$ktls" --fact "load_before=$load_before" --fact "load_after=$load_after"
}

# ---------------------------------------------------------------------------------------------
# client: plaintext load through each TLS client to a TLS greet upstream. Full handshakes go to an
# nginx upstream with neither session cache nor tickets (nothing can resume); resumed ones to a
# securesock greet upstream of each client's own (tickets on), whose log says how many resumed.
# Only the TLS client's CPU is counted.
client_section() {
    echo "== client mode: $rounds round(s) x clients {$concurrencies} x {full, resumed}, ${duration}s each" >&2
    declare -A pids ports up
    nginx_session_cache=off start_nginx client-up-full 2
    up[full]=$port up_pids=$pid
    for s in securesock stunnel; do
        start_securesock "client-up-$s"
        up[$s]=$port up_pids="$up_pids $pid"
    done
    for kind in full resumed; do
        for s in securesock stunnel; do
            u=${up[full]}
            [ "$kind" = resumed ] && u=${up[$s]}
            if [ "$s" = securesock ]; then
                start_securesock "client-$kind" --mode client --upstream "127.0.0.1:$u" --upstream-ca "$cert"
            else
                start_stunnel "stunnel-client-$kind" "$u" stunnel-client.conf.in
            fi
            pids[$s-$kind]=$pid ports[$s-$kind]=$port
            "$bench" "127.0.0.1:$port" --plaintext -n 3 --json >"$work/check.json" ||
                { echo "bench.sh: the $s client ($kind) fails the greeting check:" >&2; cat "$work/check.json" >&2; exit 1; }
        done
    done
    : >"$work/client.jsonl"
    for round in $(seq 1 "$rounds"); do
        for c in $concurrencies; do
            for kind in full resumed; do
                # Alternate the peers within each cell so drift hits both.
                for s in securesock stunnel; do
                    "$bench" measure --section client --pid "${pids[$s-$kind]}" --set "server=$s" \
                        --set "kind=$kind" --set "round=$round" --out "$work/client.jsonl" -- \
                        "$bench" "127.0.0.1:${ports[$s-$kind]}" --plaintext -c "$c" -d "$duration" --json
                done
            done
        done
    done
    for p in "${pids[@]}" $up_pids; do stop "$p"; done
    publish client client --fact "securesock_upstream_log=$work/client-up-securesock.log" \
        --fact "stunnel_upstream_log=$work/client-up-stunnel.log"
}

# ---------------------------------------------------------------------------------------------
# idle_probe NAME PID PORT: holds $idle_k idle connections, then measures memory, accept time and
# a second client's service; appends the server's record to $work/idle.jsonl.
idle_probe() {
    "$bench" sample --pid "$2" >"$work/before.json"
    t0=$(date +%s%N)
    started "$bench" "127.0.0.1:$3" --idle "$idle_k" -c 4 --hold 600 --json >"$work/idle-$1.json"
    holder=$bg
    wait_for grep -q '"mode":"idle"' "$work/idle-$1.json"
    # Accepted = the server holds a descriptor for each (polled every 10 ms, so ±10 ms).
    "$bench" sample --pid "$2" --wait-fds "$idle_k" --over "$work/before.json" >"$work/after.json"
    accept_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    "$bench" "127.0.0.1:$3" --source 127.0.0.2 --insecure -n 20 --json >"$work/probe-$1.json" || true
    stop "$holder"
    "$bench" record --section idle --before "$work/before.json" --after "$work/after.json" \
        --json "idle=$work/idle-$1.json" --json "probe=$work/probe-$1.json" \
        --set "name=$1" --set "k=$idle_k" --set "accept_ms=$accept_ms" --out "$work/idle.jsonl"
}

idle_memory() {
    echo "== idle memory: $idle_k idle connections from 127.0.0.1, a client from 127.0.0.2" >&2
    : >"$work/idle.jsonl"
    start_securesock securesock-idle --max-per-ip 10000 --max-connections 20000
    idle_probe securesock "$pid" "$port"
    stop "$pid"
    start_nginx nginx-idle 2
    idle_probe nginx "$pid" "$port"
    stop "$pid"
    publish idle idle-memory
}

# ---------------------------------------------------------------------------------------------
# established_probe NAME SERVER-PID PORT N MODE: holds N established connections against the
# server (spread over load-generator processes), samples the server before and with them, times
# a client from 127.0.0.2 meanwhile, and appends the record to $work/established.jsonl.
established_probe() {
    name=$1 server_pid=$2 server_port=$3 n=$4
    "$bench" sample --pid "$server_pid" >"$work/before.json"
    holders=$(( (n + per_holder - 1) / per_holder ))
    hpids="" held=()
    for h in $(seq 1 "$holders"); do
        share=$(( n / holders + (h <= n % holders ? 1 : 0) ))
        started "$bench" "127.0.0.1:$server_port" --established "$share" -c 4 --hold 3600 --timeout 60 \
            --insecure --json >"$work/est-$name-$h.json"
        hpids="$hpids $bg" held+=(--json "holder=$work/est-$name-$h.json")
    done
    # 19,000 handshakes take a while on a busy 2-core box: up to 10 minutes.
    for h in $(seq 1 "$holders"); do
        wait_tries=12000 wait_for grep -qs '"mode":"established"' "$work/est-$name-$h.json"
    done
    # securesock gives back a quiet connection's buffers and stack after 0.5 s (relay::QUIET);
    # the measure is taken once every connection has been quiet for twice that.
    sleep 1
    "$bench" sample --pid "$server_pid" >"$work/after.json"
    # One after another, each timed from connect to its 16 bytes back.
    "$bench" "127.0.0.1:$server_port" --source 127.0.0.2 --established 20 -c 1 --hold 0.001 \
        --insecure --json >"$work/est-probe-$name.json" || true
    for h in $hpids; do stop "$h"; done
    "$bench" record --section established --before "$work/before.json" --after "$work/after.json" \
        "${held[@]}" --json "probe=$work/est-probe-$name.json" --set "server=$name" --set "mode=$5" \
        --set "n=$n" --out "$work/established.jsonl"
    rm -f "$work"/est-"$name"-*.json
}

established() {
    echo "== established: $rounds round(s) x $established_n forward connections through each front; then $established_echo echo-mode and $established_fwd forward-mode ones against securesock" >&2
    start_listening "$work/echo-upstream.log" "$bin/examples/echo-upstream" 127.0.0.1:0
    up_pid=$pid up_port=$port
    : >"$work/established.jsonl"
    load_before=$(load)
    ss_flags=(--max-connections 20000 --max-per-ip 20000 --idle-timeout 3600)
    # What the systemd unit, the image and the Kubernetes manifest set: no per-thread malloc cache.
    packaged_env=$(sed -n 's/^Environment=\(GLIBC_TUNABLES=.*\)$/\1/p' packaging/securesock.service)
    # front NAME N MODE START-CMD...: starts a front, holds N connections through it, stops it.
    front() {
        label=$1 count=$2 fmode=$3; shift 3
        "$@"
        established_probe "$label" "$pid" "$port" "$count" "$fmode"
        stop "$pid"
    }
    fwd=(--mode forward --upstream "127.0.0.1:$up_port" "${ss_flags[@]}")
    for round in $(seq 1 "$rounds"); do
        echo "  round $round" >&2
        front securesock "$established_n" forward start_securesock securesock-est "${fwd[@]}"
        securesock_env=$packaged_env front securesock-packaged "$established_n" forward \
            start_securesock securesock-est-packaged "${fwd[@]}"
        front nginx "$established_n" forward start_nginx nginx-est 1 "$up_port"
        front stunnel "$established_n" forward start_stunnel stunnel-est "$up_port"
    done
    securesock_env=$packaged_env start_securesock securesock-est-echo --mode echo "${ss_flags[@]}"
    grep -E 'WARN|warn' "$work/securesock-est-echo.log" >"$work/established-warnings.txt" || true
    established_probe securesock-echo "$pid" "$port" "$established_echo" echo
    stop "$pid"
    securesock_env=$packaged_env front securesock-forward "$established_fwd" forward \
        start_securesock securesock-est-fwd "${fwd[@]}"
    stop "$up_pid"
    publish established established --warnings "$work/established-warnings.txt" \
        --fact "packaged_env=$packaged_env" --fact "load_before=$load_before" --fact "load_after=$(load)"
}

# ---------------------------------------------------------------------------------------------
soak() {
    echo "== soak: $soak_n connections against securesock, 16 clients" >&2
    start_securesock securesock-soak
    half=$((soak_n / 2))
    : >"$work/soak.jsonl"
    soak_point() { # LABEL CONNECTIONS [RUN-RESULT]
        "$bench" sample --pid "$pid" >"$work/after.json"
        "$bench" record --section soak --after "$work/after.json" ${3:+--json "run=$3"} \
            --set "point=$1" --set "connections=$2" --out "$work/soak.jsonl"
    }
    soak_point start 0
    t0=$(date +%s)
    "$bench" "127.0.0.1:$port" --insecure -c 16 -n "$half" --json >"$work/soak1.json" || true
    soak_point middle "$half" "$work/soak1.json"
    "$bench" "127.0.0.1:$port" --insecure -c 16 -n "$((soak_n - half))" --json >"$work/soak2.json" || true
    soak_point end "$soak_n" "$work/soak2.json"
    seconds=$(( $(date +%s) - t0 ))
    stop "$pid"
    publish soak soak --fact "seconds=$seconds"
}

for section in $sections; do
    case "$section" in
        throughput) throughput ;;
        forward) forward ;;
        client) client_section ;;
        idle) idle_memory ;;
        soak) soak ;;
        established) established ;;
    esac
done
echo "bench.sh: ran for $(( $(date +%s) - t_start )) s after the build; report in $report" >&2
if [ "$write" -eq 1 ]; then
    echo "bench.sh: updated BENCHMARKS.md$(case " $sections " in *" throughput "*) echo " and docs/bench-throughput.png" ;; esac)" >&2
fi
