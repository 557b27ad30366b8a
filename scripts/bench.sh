#!/bin/bash
# Benchmarks securesock against nginx (stream module) and stunnel on loopback: same certificate,
# same Mozilla intermediate v6.0 settings, load from securesock-bench; writes a report.
#   scripts/bench.sh [--quick] [--throughput] [--forward] [--client] [--idle-memory] [--established [N]] [--services] [--soak [N]] [--all] [--trixie] [--cores N] [--rounds N] [--duration SECS] [--out DIR] [--write]
# Sections (default --throughput; medians over --rounds runs, 3, of --duration seconds, 5):
#   --throughput   full and resumed handshakes at 1, 16 and 64 clients, peers in alternating
#                  rounds: conns/s, p50/p99, server CPU per connection, peak RSS; a PNG chart
#   --forward      one connection moving 512 MiB up, then down, through securesock --mode forward,
#                  nginx proxy_pass and stunnel to a plaintext upstream (examples/bulk.rs), for
#                  each pairing of client and upstream chunk {256 KiB, 16 KiB}: MB/s, CPU s/GiB
#   --client       plaintext load through securesock --mode client and stunnel client = yes to a
#                  TLS greet upstream, full and resumed handshakes: conns/s, p99, CPU/connection
#   --idle-memory  securesock's and nginx's RSS before and with 5,000 idle connections, the burst's
#                  accept time, and whether a client from 127.0.0.2 is still served in 50 ms
#   --established [N]  memory per established, idle connection (RSS and kernel): N (5,000) TLS
#                  clients echo 16 bytes through securesock --mode forward, nginx (1 worker) and
#                  stunnel to a plaintext echo upstream and stay open; then 19,000 against --mode
#                  echo and 9,000 against --mode forward; a client from 127.0.0.2 timed meanwhile
#   --services     many services in one process (issue 19): handshakes/s through one of 10
#                  services against one alone (alternating rounds), the failover cost of the first
#                  and the later clients of three upstream sets (live; a closed port first; a
#                  blackholed address first), and start, reload and memory of 1,000 services
#   --soak [N]     N connections (1,000,000) against securesock: failures, RSS, open fds at start,
#                  middle and end
#   --all          throughput, forward, client and idle-memory (not soak or established)
#   --trixie       inside a cached debootstrap trixie root (scripts/bench-root.sh, as root):
#                  OpenSSL 3.5, X25519MLKEM768, trixie's nginx; throughput against nginx only, at
#                  16 and 64 clients, in a section of its own (throughput-trixie)
# --cores N  throughput only, against nginx with N workers: every server pinned to CPUs 0..N-1
#            (taskset), the load generator to the CPUs left, if any; a section of its own
#            (throughput-coresN, with --trixie throughput-trixie-coresN). How the handshake
#            rate scales with cores (OpenSSL 3's locks against nginx's single-threaded workers)
# --quick    a smoke test of the chosen sections, not figures to publish: 1 round of 1 s runs at 1
#            and 16 clients, 64 MiB transfers, 200 idle connections, a 2,000-connection soak
# --out DIR  the report: DIR/BENCHMARKS.md, and DIR/docs/bench-throughput.png for throughput
#            (default: a new /tmp/securesock-bench-report.XXXXXX). Nothing in the working tree changes.
# --write    also replace those sections of the tracked BENCHMARKS.md and docs/bench-throughput.png
#            (`scripts/bench.sh --all --write` for the published figures); refused with --quick.
# Installs nginx, libnginx-mod-stream, stunnel4 and gnuplot-nox when missing. Traffic stays on
# 127.0.0.1 (and 127.0.0.2). Orchestration only: peers, sampling, medians and the report are
# `securesock-bench peer|sample|measure|hold|record|report|publish|machine` (bench/src/, tested),
# the peers' configurations the templates in bench/peers/.
set -eu
# A relative --out is relative to where the script was started, not to the repository.
started_in=$PWD
cd "$(dirname "$0")/.."
. scripts/common.sh

usage() { sed -n '4p' "$0" | sed 's/^#  *//' >&2; }

# Recorded before the options are consumed, for the "command" line of each section.
command_line="scripts/bench.sh${*:+ $*}"
# And kept whole for the run inside a root (--trixie), which parses them again.
all_args=("$@")
quick=0 rounds=3 duration=5 write=0 out="" sections="" soak_n=1000000 established_n=5000
# The tens-of-thousands runs of --established: echo mode takes one descriptor per connection and
# forward mode two, under the hard limit of 20,000 open files per process of the box it was made on.
established_echo=19000 established_fwd=9000
# The Debian release whose root the run happens in (--trixie); empty: this machine as it is.
suite="" cores=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; shift ;;
        --throughput|--forward|--client) sections="$sections ${1#--}"; shift ;;
        --idle-memory) sections="$sections idle"; shift ;;
        --established)
            sections="$sections established"; shift
            case "${1:-}" in ''|-*) ;; *) established_n=$1; shift ;; esac ;;
        --services) sections="$sections services"; shift ;;
        --soak)
            sections="$sections soak"; shift
            case "${1:-}" in ''|-*) ;; *) soak_n=$1; shift ;; esac ;;
        --all) sections="$sections throughput forward client idle"; shift ;;
        --rounds) [ $# -ge 2 ] || { usage; exit 2; }; rounds=$2; shift 2 ;;
        --duration) [ $# -ge 2 ] || { usage; exit 2; }; duration=$2; shift 2 ;;
        --out) [ $# -ge 2 ] || { usage; exit 2; }; out=$2; shift 2 ;;
        --write) write=1; shift ;;
        --trixie) suite=trixie; shift ;;
        --cores) [ $# -ge 2 ] || { usage; exit 2; }; cores=$2; shift 2 ;;
        # The header comment, up to the first line that is not one.
        -h|--help) sed -n '1d; /^#/!q; s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument '$1'" >&2; usage; exit 2 ;;
    esac
done
[ -n "$sections" ] || sections=throughput
for v in "$rounds" "$soak_n" "$established_n"; do
    case "$v" in ''|*[!0-9]*|0) echo "bench.sh: --rounds, --soak and --established need a positive whole number, got '$v'" >&2; exit 2 ;; esac
done
if [ -n "$cores" ]; then
    case "$cores" in *[!0-9]*|0) echo "bench.sh: --cores needs a positive whole number, got '$cores'" >&2; exit 2 ;; esac
    [ "$cores" -le "$(nproc)" ] || { echo "bench.sh: --cores $cores, but this machine has $(nproc)" >&2; exit 2; }
    if [ "${sections# }" != throughput ]; then
        echo "bench.sh: --cores goes with --throughput alone" >&2
        exit 2
    fi
fi
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
[ -z "$suite" ] || concurrencies="16 64" peers="securesock nginx" section_suffix="-$suite"
# --cores: servers on CPUs 0..N-1, the client on the rest (none left: it shares them).
on_servers=() on_client=() server_cpus="" client_cpus=""
if [ -n "$cores" ]; then
    peers="securesock nginx" section_suffix="$section_suffix-cores$cores" server_cpus="0-$((cores - 1))"
    [ "$cores" -ge "$(nproc)" ] || client_cpus="$cores-$(($(nproc) - 1))"
    on_servers=(taskset -c "$server_cpus")
    [ -z "$client_cpus" ] || on_client=(taskset -c "$client_cpus")
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

peer_packages=(nginx libnginx-mod-stream stunnel4 gnuplot-nox) here=()
if [ -n "$suite" ] && [ "${SECURESOCK_BENCH_IN_ROOT:-}" = "$suite" ]; then
    # Inside the root: its packages were installed when it was made, and it has no toolchain.
    need_packages "${peer_packages[@]}"
else
    [ -z "$suite" ] || [ "$(id -u)" -eq 0 ] || { echo "bench.sh: --$suite needs root (debootstrap, chroot, namespaces)" >&2; exit 1; }
    # The peers' packages only where they run: here, or (--trixie) inside the root.
    [ -n "$suite" ] || here=(ca-certificates "${peer_packages[@]}")
    need_packages openssl libssl-dev pkg-config gcc make libc6-dev "${here[@]}"
    need_cargo
    echo "== building (release)" >&2
    cargo build --release --locked --quiet -p securesock --bin securesock \
        -p securesock-bench --bin securesock-bench --example plain-greeter --example bulk \
        --example echo-upstream
    # Built here, run there: this same script again, inside the root.
    [ -z "$suite" ] || exec scripts/bench-root.sh "$suite" "$out" "${all_args[@]}"
fi

# Many sockets at once (5,000 idle on each side, plus the servers' own): raise the descriptor limit
# for this shell and everything it starts.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
bin=$PWD/target/release
bench=$bin/securesock-bench
# The runs' own time, without package installs and the build.
t_start=$(date +%s)

work=$(mktemp -d /tmp/securesock-bench.XXXXXX)
# Every peer by name: its PID and port; and the PIDs still running.
declare -A pids ports live
cleanup() {
    # Only the processes this script started, by PID.
    [ "${#live[@]}" -eq 0 ] || "$bench" peer stop "${!live[@]}" || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scripts/gen-certs.sh --out "$work/certs" >/dev/null
cert=$work/certs/server-cert.pem
key=$work/certs/server-key.pem
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

# start KIND NAME [OPTION...] [-- EXTRA...]: a peer, started and ready (`securesock-bench peer
# start --help`), its files $work/NAME.*; sets pids[NAME], ports[NAME], $pid and $port.
start() {
    got=$("${on_servers[@]}" "$bench" peer start --dir "$work" --bin "$bin" --cert "$cert" --key "$key" \
        --groups "$groups" --handshake-timeout "$handshake_timeout" --greeting "$greeting" "$@")
    read -r pid port <<<"$got"
    pids[$2]=$pid ports[$2]=$port live[$pid]=1
}
# stop NAME...: those peers, gone when it returns; stop_all: every one still running.
stop() {
    local n ps=()
    for n; do ps+=("${pids[$n]}") && unset "live[${pids[$n]}]"; done
    "$bench" peer stop "${ps[@]}"
}
stop_all() {
    [ "${#live[@]}" -eq 0 ] || "$bench" peer stop "${!live[@]}"
    live=()
}
load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

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

# sweep SECTION PEERS CELL...: the measured shape of throughput, forward and client: $rounds
# rounds of every CELL, each run against every server of PEERS in turn, so drift (heat, noisy
# neighbours) hits them all alike. The section's `cell SERVER CELL` sets the run: the peer it
# measures ($measured), its labels ($labels) and the load command ($cmd).
sweep() {
    # Names of their own: `cell` sets globals of the section's choosing.
    local sweep_sec=$1 sweep_servers=$2 sweep_round sweep_cell sweep_s; shift 2
    : >"$work/$sweep_sec.jsonl"
    for sweep_round in $(seq 1 "$rounds"); do
        for sweep_cell in "$@"; do
            for sweep_s in $sweep_servers; do
                cell "$sweep_s" "$sweep_cell"
                "$bench" measure --section "$sweep_sec" --pid "${pids[$measured]}" --set "server=$sweep_s" \
                    "${labels[@]}" --set "round=$sweep_round" --out "$work/$sweep_sec.jsonl" -- "${cmd[@]}"
            done
        done
    done
}

throughput() {
    echo "== throughput: $rounds round(s) x clients {$concurrencies} x {full, resumed}, ${duration}s each" >&2
    # Each peer must pass the same check before it is measured. Where the groups start with the
    # post-quantum hybrid, each must also negotiate it with a client on the library's default
    # groups, as securesock-bench's are.
    checked=(--check tls)
    [ "${groups%%:*}" != X25519MLKEM768 ] || checked+=(--expect-group X25519MLKEM768)
    for s in $peers; do
        case "$s" in
            securesock) start securesock securesock "${checked[@]}" ;;
            nginx) start nginx nginx --workers "${cores:-2}" "${checked[@]}" ;;
            nginx-1w) start nginx nginx-1w --workers 1 "${checked[@]}" ;;
            stunnel) # in front of a plain greeter
                start program greeter -- "$bin/examples/plain-greeter" 127.0.0.1:0 "$greeting"
                start stunnel stunnel --upstream "$port" "${checked[@]}" ;;
        esac
    done
    cell() {
        read -r c flag <<<"$2" && measured=$1 labels=()
        cmd=("${on_client[@]}" "$bench" "127.0.0.1:${ports[$1]}" --insecure -c "$c" -d "$duration" ${flag:+"$flag"} --json)
    }
    cells=() && for c in $concurrencies; do cells+=("$c" "$c --resume"); done
    # Other jobs on the box move every figure: the run says how busy the box was around it.
    load_start=$(load_avg)
    sweep throughput "$peers" "${cells[@]}"
    load_end=$(load_avg)
    : >"$work/hwm.jsonl"
    for s in $peers; do "$bench" sample --pid "${pids[$s]}" --set server="$s" --out "$work/hwm.jsonl"; done
    stop_all
    publish throughput "throughput$section_suffix" --hwm "$work/hwm.jsonl" --plot "$work" \
        --fact "servers=$peers" --fact "cores=$cores" --fact "server_cpus=$server_cpus" \
        --fact "client_cpus=$client_cpus" --fact "load_start=$load_start" --fact "load_end=$load_end"
    gnuplot "$work/chart.gp"
    # The section links docs/bench-throughput.png, which resolves beside either BENCHMARKS.md.
    cp "$work/chart.png" "$out/docs/bench-throughput$section_suffix.png"
    [ "$write" -eq 0 ] || { mkdir -p docs && cp "$work/chart.png" "docs/bench-throughput$section_suffix.png"; }
}

# forward: one TLS connection moving $bulk_bytes up, then down, through each forwarder to the
# plaintext upstream of examples/bulk.rs; MB/s as the client sees it, server CPU per GiB.
forward() {
    echo "== forward: $rounds round(s) x client chunk {$bulk_chunks} x upstream chunk {$bulk_chunks} x {up, down} x 1 connection of $bulk_bytes bytes" >&2
    start program bulk-upstream -- "$bin/examples/bulk" upstream 127.0.0.1:0
    up=$port
    # Kernel TLS needs the kernel's `tls` upper-layer protocol and a libssl built with KTLS.
    ktls=$("$bench" machine --ktls)
    start securesock securesock -- --mode forward --upstream "127.0.0.1:$up"
    start nginx nginx --upstream "$up"
    start stunnel stunnel --upstream "$up"
    cell() {
        read -r cc uc dir <<<"$2" && measured=$1 labels=()
        cmd=("$bin/examples/bulk" "$dir" "127.0.0.1:${ports[$1]}" "$bulk_bytes" "$cc" "$uc")
    }
    cells=() && for cc in $bulk_chunks; do for uc in $bulk_chunks; do cells+=("$cc $uc up" "$cc $uc down"); done; done
    # The box is shared: the load says how far to trust the figures.
    load_before=$(load_avg)
    echo "  load average (1, 5, 15 min) before: $load_before" >&2
    sweep forward "securesock nginx stunnel" "${cells[@]}"
    load_after=$(load_avg)
    echo "  load average (1, 5, 15 min) after: $load_after" >&2
    stop_all
    publish forward forward --fact "ktls=$ktls" --fact "load_before=$load_before" --fact "load_after=$load_after"
}

# client: plaintext load through each TLS client to a TLS greet upstream. Full handshakes go to an
# nginx upstream with neither session cache nor tickets (nothing can resume); resumed ones to a
# securesock greet upstream of each client's own (tickets on), whose log says how many resumed.
# Only the TLS client's CPU is counted.
client() {
    echo "== client mode: $rounds round(s) x clients {$concurrencies} x {full, resumed}, ${duration}s each" >&2
    start nginx client-up-full --session-cache off
    for s in securesock stunnel; do start securesock "client-up-$s"; done
    for kind in full resumed; do
        for s in securesock stunnel; do
            u=${ports[client-up-full]}
            [ "$kind" = full ] || u=${ports[client-up-$s]}
            case "$s" in
                securesock) start securesock "$s-$kind" --check plaintext -- --mode client \
                    --upstream "127.0.0.1:$u" --upstream-ca "$cert" ;;
                stunnel) start stunnel-client "$s-$kind" --upstream "$u" --check plaintext ;;
            esac
        done
    done
    cell() {
        read -r c kind <<<"$2" && measured=$1-$kind labels=(--set "kind=$kind")
        cmd=("$bench" "127.0.0.1:${ports[$measured]}" --plaintext -c "$c" -d "$duration" --json)
    }
    cells=() && for c in $concurrencies; do cells+=("$c full" "$c resumed"); done
    sweep client "securesock stunnel" "${cells[@]}"
    stop_all
    publish client client --fact "securesock_upstream_log=$work/client-up-securesock.log" \
        --fact "stunnel_upstream_log=$work/client-up-stunnel.log"
}

# held SECTION PEER N LABEL...: N connections held against PEER (`securesock-bench hold`: the
# server sampled before and with them, a client from 127.0.0.2 timed meanwhile), recorded; then
# PEER is stopped.
held() {
    "$bench" hold --section "$1" --pid "${pids[$2]}" --target "127.0.0.1:${ports[$2]}" --count "$3" \
        --per-process "$per_holder" "${@:4}" --out "$work/$1.jsonl"
    stop "$2"
}

idle() {
    echo "== idle memory: $idle_k idle connections from 127.0.0.1, a client from 127.0.0.2" >&2
    : >"$work/idle.jsonl"
    start securesock securesock-idle -- --max-per-ip 10000 --max-connections 20000
    held idle securesock-idle "$idle_k" --set name=securesock --set "k=$idle_k"
    start nginx nginx-idle
    held idle nginx-idle "$idle_k" --set name=nginx --set "k=$idle_k"
    publish idle idle-memory
}

# front NAME N MODE KIND PEER START-OPTION...: starts a front, holds N connections through it, stops it.
front() {
    start "$4" "$5" "${@:6}"
    held established "$5" "$2" --set "server=$1" --set "mode=$3" --set "n=$2"
}

established() {
    echo "== established: $rounds round(s) x $established_n forward connections through each front; then $established_echo echo-mode and $established_fwd forward-mode ones against securesock" >&2
    start program echo-upstream -- "$bin/examples/echo-upstream" 127.0.0.1:0
    up=$port
    : >"$work/established.jsonl"
    load_before=$(load_avg)
    ss_flags=(--max-connections 20000 --max-per-ip 20000 --idle-timeout 3600)
    # What the systemd unit, the image and the Kubernetes manifest set: no per-thread malloc cache.
    packaged_env=$(sed -n 's/^Environment=\(GLIBC_TUNABLES=.*\)$/\1/p' packaging/securesock.service)
    packaged=()
    [ -z "$packaged_env" ] || packaged=(--env "$packaged_env")
    fwd=(-- --mode forward --upstream "127.0.0.1:$up" "${ss_flags[@]}")
    for round in $(seq 1 "$rounds"); do
        echo "  round $round" >&2
        front securesock "$established_n" forward securesock securesock-est "${fwd[@]}"
        front securesock-packaged "$established_n" forward securesock securesock-est-packaged \
            "${packaged[@]}" "${fwd[@]}"
        front nginx "$established_n" forward nginx nginx-est --workers 1 --upstream "$up"
        front stunnel "$established_n" forward stunnel stunnel-est --upstream "$up"
    done
    start securesock securesock-est-echo "${packaged[@]}" -- --mode echo "${ss_flags[@]}"
    grep -E 'WARN|warn' "$work/securesock-est-echo.log" >"$work/established-warnings.txt" || true
    # Then the most connections a process can hold: echo mode one descriptor each, forward two.
    held established securesock-est-echo "$established_echo" --set server=securesock-echo --set mode=echo \
        --set "n=$established_echo"
    front securesock-forward "$established_fwd" forward securesock securesock-est-fwd \
        "${packaged[@]}" "${fwd[@]}"
    stop_all
    publish established established --warnings "$work/established-warnings.txt" \
        --fact "packaged_env=$packaged_env" --fact "load_before=$load_before" --fact "load_after=$(load_avg)"
}

soak() {
    echo "== soak: $soak_n connections against securesock, 16 clients" >&2
    start securesock securesock-soak
    half=$((soak_n / 2))
    : >"$work/soak.jsonl"
    soak_point() { # LABEL CONNECTIONS [RUN-RESULT]
        "$bench" sample --pid "${pids[securesock-soak]}" >"$work/after.json"
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
    stop_all
    publish soak soak --fact "seconds=$seconds"
}

# services_file FILE N MODE [KEY = VALUE line...]: N services of MODE on 127.0.0.1, one certificate,
# written with printf as the BENCHMARKS.md figures were first measured, each extra line in
# [defaults]. Port 0 for every service (a fresh port each): a fixed range may be taken on a shared box.
services_file() {
    local file=$1 n=$2 mode=$3 i; shift 3
    {
        printf '[defaults]\ncert = "%s"\nkey = "%s"\nmode = "%s"\nwatch-interval = 0\nhandshake-timeout = %s\n' \
            "$cert" "$key" "$mode" "$handshake_timeout"
        printf '%s\n' "$@"
        for i in $(seq 0 $((n - 1))); do
            printf '[[service]]\nname = "s%d"\nlisten = "127.0.0.1:0"\n' "$i"
        done
    } >"$file"
}

# lines_in FILE PATTERN N PID: waits until FILE has N lines matching PATTERN (polling every 10 ms)
# or PID has gone; false when it has.
lines_in() {
    while [ "$(grep -c -- "$2" "$1")" -lt "$3" ]; do
        kill -0 "$4" 2>/dev/null || return 1
        sleep 0.01
    done
}

# scale_round N ROUND: N greet services started, timed to the Nth "listening on" line, sampled,
# reloaded with SIGHUP and timed to the Nth "reload ok" line, sampled again, stopped.
scale_round() {
    local n=$1 file=$work/scale-$1.toml log=$work/scale-$1.log t0 t1 t2 t3 spid rss threads rss2
    services_file "$file" "$n" greet
    : >"$log"
    t0=$(date +%s.%N)
    "$bin/securesock" --config "$file" 2>"$log" &
    spid=$! live[$spid]=1
    lines_in "$log" 'listening on' "$n" "$spid" || { echo "bench.sh: $n services did not start: $(tail -n 3 "$log")" >&2; exit 1; }
    t1=$(date +%s.%N)
    sleep 0.5
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$spid/status")
    threads=$(awk '/^Threads/ {print $2}' "/proc/$spid/status")
    t2=$(date +%s.%N)
    kill -HUP "$spid"
    lines_in "$log" 'reload ok' "$n" "$spid" || { echo "bench.sh: $n services did not reload: $(tail -n 3 "$log")" >&2; exit 1; }
    t3=$(date +%s.%N)
    sleep 0.5
    rss2=$(awk '/^VmRSS/ {print $2}' "/proc/$spid/status")
    stop_pid "$spid"
    "$bench" record --section services --set kind=scale --set "services=$n" --set "round=$2" \
        --set "start_s=$(seconds_between "$t0" "$t1")" --set "reload_s=$(seconds_between "$t2" "$t3")" \
        --set "rss_kb=$rss" --set "threads=$threads" --set "rss_after_reload_kb=$rss2" \
        --out "$work/services.jsonl"
}

# seconds_between T0 T1: T1 - T0 as a number with a leading digit (0.250, not bc's .250).
seconds_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# stop_pid PID: one process this script started, gone when it returns.
stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    unset "live[$1]"
}

services() {
    local clients=16 later=20 connect_timeout=1 round set
    [ "$quick" -eq 0 ] || later=5
    echo "== services: $rounds round(s): handshakes through 1 of 10 services vs 1 alone (-c $clients, ${duration}s); failover first/later clients; 1,000 services start/reload" >&2
    load_start=$(load_avg)
    # (1) One of 10 against one alone, both running, the same load in alternating rounds.
    services_file "$work/svc10.toml" 10 greet
    services_file "$work/svc1.toml" 1 greet
    start program svc10 -- "$bin/securesock" --config "$work/svc10.toml"
    start program svc1 -- "$bin/securesock" --config "$work/svc1.toml"
    cell() {
        measured=$1 labels=(--set kind=handshakes --set "services=${1#svc}" --set "clients=$2")
        cmd=("${on_client[@]}" "$bench" "127.0.0.1:${ports[$1]}" --insecure -c "$2" -d "$duration" --json)
    }
    sweep services "svc1 svc10" "$clients"
    stop svc10 svc1
    # (2) Failover, behind one forward service restarted each round (passive health starts empty).
    start program greeter -- "$bin/examples/plain-greeter" 127.0.0.1:0 "$greeting"
    local up=$port
    # A listener with backlog 0 that never accepts, its queue filled: SYNs to it go unanswered.
    start program blackhole -- python3 -c '
import socket, sys, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(0)
port = l.getsockname()[1]; held = []
while True:
    s = socket.socket(); s.settimeout(0.3)
    try:
        s.connect(("127.0.0.1", port)); held.append(s)
    except OSError:
        break
print("blackhole listening on 127.0.0.1:%d" % port, file=sys.stderr, flush=True)
while True:
    time.sleep(3600)
'
    local hole=$port
    for round in $(seq 1 "$rounds"); do
        for set in live refused-first blackholed-first; do
            case "$set" in
                live) list="\"127.0.0.1:$up\"" ;;
                refused-first) list="\"127.0.0.1:1\", \"127.0.0.1:$up\"" ;;
                blackholed-first) list="\"127.0.0.1:$hole\", \"127.0.0.1:$up\"" ;;
            esac
            services_file "$work/fo.toml" 1 forward "upstream = [$list]" "connect-timeout = $connect_timeout"
            start program "fo-$set" -- "$bin/securesock" --config "$work/fo.toml"
            "$bench" "127.0.0.1:$port" --insecure -c 1 -n 1 --json >"$work/fo-first.json" || true
            "$bench" "127.0.0.1:$port" --insecure -c 1 -n "$later" --json >"$work/fo-later.json" || true
            for client in first later; do
                "$bench" record --section services --run "$work/fo-$client.json" --set kind=failover \
                    --set "set=$set" --set "client=$client" --set "round=$round" --out "$work/services.jsonl"
            done
            stop "fo-$set"
        done
    done
    stop greeter blackhole
    # (3) 1,000 services against one, alternating.
    for round in $(seq 1 "$rounds"); do
        scale_round 1 "$round"
        scale_round 1000 "$round"
    done
    publish services services --fact "load_start=$load_start" --fact "load_end=$(load_avg)" \
        --fact "clients=$clients" --fact "later=$later" --fact "connect_timeout=$connect_timeout"
}

# Each section is the function of its name (throughput forward client idle established services soak).
for section in $sections; do "$section"; done
echo "bench.sh: ran for $(( $(date +%s) - t_start )) s after the build; report in $report" >&2
[ "$write" -eq 0 ] ||
    echo "bench.sh: updated BENCHMARKS.md$(case " $sections " in *" throughput "*) echo " and docs/bench-throughput.png" ;; esac)" >&2
