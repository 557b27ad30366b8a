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
# Installs nginx, libnginx-mod-stream, stunnel4, jq and gnuplot-nox when missing. All traffic stays
# on 127.0.0.1 (and 127.0.0.2 as a second client).
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
quick=0
rounds=3
duration=5
write=0
out=""
sections=""
soak_n=1000000
established_n=5000
# The tens-of-thousands runs of --established: echo mode takes one descriptor per connection and
# forward mode two, under a hard limit of 20,000 open files per process on the box this was
# written for.
established_echo=19000
established_fwd=9000
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
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
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

# The median of a list of numbers (null when empty), shared by every table's jq program.
jq_median='def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
    else (.[length / 2 - 1] + .[length / 2]) / 2 end;'
concurrencies="1 16 64"
peers="securesock nginx nginx-1w stunnel"
# Where the results go in BENCHMARKS.md: one section per kind of run, so a run on another release
# does not replace this machine's figures.
section_suffix=""
if [ -n "$suite" ]; then
    concurrencies="16 64"
    peers="securesock nginx"
    section_suffix="-$suite"
fi
idle_k=5000
# 512 MiB per transfer: 4 chunk pairings x 2 directions x 3 forwarders per round keep a 3-round
# run to a few minutes, and a transfer still lasts long enough (~0.5 s) for the CPU ticks to count.
bulk_bytes=$((512 * 1024 * 1024))
# Client and upstream read/write sizes in forward mode, every pairing measured: 256 KiB suits a
# forwarder (few large records), 16 KiB is what many clients and servers use (one TLS record each).
bulk_chunks="262144 16384"
if [ "$quick" -eq 1 ]; then
    bulk_bytes=$((64 * 1024 * 1024))
    rounds=1
    duration=1
    concurrencies="1 16"
    idle_k=200
    [ "$soak_n" -eq 1000000 ] && soak_n=2000
    [ "$established_n" -eq 5000 ] && established_n=200
    established_echo=600
    established_fwd=300
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
        --include nginx,libnginx-mod-stream,stunnel4,jq,gnuplot-nox,openssl,ca-certificates,procps | tail -n 1)
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
    need_packages nginx libnginx-mod-stream stunnel4 jq gnuplot-nox
else
    need_packages openssl libssl-dev pkg-config gcc libc6-dev ca-certificates \
        nginx libnginx-mod-stream stunnel4 jq gnuplot-nox
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
    for pid in $started_pids; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $started_pids; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scripts/gen-certs.sh --out "$work/certs" >/dev/null
cert=$work/certs/server-cert.pem
key=$work/certs/server-key.pem

# Mozilla intermediate v6.0, as securesock applies it (src/tls.rs), for the peers' configurations.
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
alive() { kill -0 "$1" 2>/dev/null; }

# Servers: each start_* sets $pid (the process to stop) and $port.
# $securesock_env, when set (VAR=VALUE), is put in securesock's environment.
start_securesock() { # NAME EXTRA-FLAGS...
    name=$1; shift
    # Emptied here, not by the background redirection: a log left by an earlier round under the
    # same name must not be read as this server's.
    : >"$work/$name.log"
    env ${securesock_env:+"$securesock_env"} "$bin/securesock" --listen 127.0.0.1:0 --cert "$cert" --key "$key" \
        --handshake-timeout "$handshake_timeout" "$@" 2>"$work/$name.log" &
    pid=$!
    started_pids="$started_pids $pid"
    wait_for logged_listening "$work/$name.log"
    port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/$name.log" | head -n 1)
}

start_nginx() { # NAME WORKERS [UPSTREAM-PORT]
    name=$1
    # Greet with `return`, or forward to a plaintext upstream (half-close on, as a TLS front for
    # a request/response protocol needs).
    body="return \"$greeting\";"
    [ -z "${3:-}" ] || body="proxy_pass 127.0.0.1:$3; proxy_half_close on;"
    free_port
    mkdir -p "$work/$name"
    cat >"$work/$name/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes $2;
worker_rlimit_nofile 65536;
daemon off;
pid $work/$name/nginx.pid;
error_log $work/$name/error.log warn;
events { worker_connections 20000; }
stream {
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $cert;
        ssl_certificate_key $key;
        # Mozilla intermediate v6.0 for nginx, as its generator writes it.
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ecdh_curve $groups;
        ssl_ciphers $tls12_ciphers;
        ssl_conf_command Ciphersuites $tls13_suites;
        ssl_prefer_server_ciphers off;
        ssl_session_timeout 1d;
        ssl_session_cache ${nginx_session_cache:-shared:MozSSL:10m};
        ssl_session_tickets off;
        ssl_handshake_timeout ${handshake_timeout}s;
        $body
    }
}
EOF
    nginx -e "$work/$name/error.log" -p "$work/$name" -c "$work/$name/nginx.conf" &
    pid=$!
    started_pids="$started_pids $pid"
    wait_for port_open "$port"
}

start_stunnel() { # NAME [UPSTREAM-PORT]
    name=$1
    if [ -n "${2:-}" ]; then
        greeter_port=$2
    else
        "$bin/examples/plain-greeter" 127.0.0.1:0 "$greeting" 2>"$work/greeter.log" &
        greeter_pid=$!
        started_pids="$started_pids $greeter_pid"
        wait_for logged_listening "$work/greeter.log"
        greeter_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/greeter.log" | head -n 1)
    fi
    free_port
    cat >"$work/$name.conf" <<EOF
foreground = quiet
syslog = no
output = $work/$name.log
pid =
[greet]
accept = 127.0.0.1:$port
connect = 127.0.0.1:$greeter_port
cert = $cert
key = $key
sslVersionMin = TLSv1.2
ciphers = $tls12_ciphers
ciphersuites = $tls13_suites
curves = $groups
TIMEOUTbusy = $handshake_timeout
EOF
    stunnel "$work/$name.conf" &
    pid=$!
    started_pids="$started_pids $pid"
    wait_for port_open "$port"
}

stop() { # PID
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# The PIDs of a server: the process and its children (nginx's workers).
family() { # PID
    echo "$1"
    pgrep -P "$1" || true
}
# Clock ticks of user + system CPU used so far by a server's processes (threads included, exited
# threads too). Fields 14 and 15 of /proc/PID/stat, counted after the ")" that ends the name.
cpu_ticks() { # PID
    total=0
    for p in $(family "$1"); do
        t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}
# Sum of a /proc/PID/status field (kB) over a server's processes: VmRSS now, VmHWM at peak.
mem_kb() { # PID FIELD
    for p in $(family "$1"); do
        awk -v f="$2:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null || true
    done | awk '{s += $1} END {print s + 0}'
}
fd_count() { # PID
    for p in $(family "$1"); do
        find "/proc/$p/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l
    done | awk '{s += $1} END {print s + 0}'
}
tck=$(getconf CLK_TCK)

versions() {
    [ -z "$suite" ] || echo "- run inside a debootstrap $(sed -n 's/^PRETTY_NAME="\(.*\)"$/\1/p' /etc/os-release) root (\`scripts/rootfs.sh --suite $suite\`) on the machine below, in its own network namespace (loopback only)"
    echo "- machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r)"
    echo "- $(openssl version)"
    echo "- $(nginx -v 2>&1 | sed 's/^nginx version: //'), stream module, Debian package $(dpkg-query -W -f='${Version}' nginx 2>/dev/null)"
    echo "- $(stunnel -version 2>&1 | grep -m1 '^stunnel' | sed 's/ on .*//')"
    echo "- $("$bin/securesock" --version) (release build), $("$bin/securesock-bench" --version)"
    echo "- key exchange groups: $groups; certificate: RSA 2048, self-signed (scripts/gen-certs.sh)"
}

# replace_section MD NAME FILE: puts FILE between NAME's markers in MD (appending the section when
# it is not there yet), leaving the other sections as they are.
replace_section() {
    md=$1
    begin="<!-- bench:$2:begin -->"
    end="<!-- bench:$2:end -->"
    if [ ! -e "$md" ]; then
        printf '%s\n\n%s\n' "# Benchmarks" "Written by \`scripts/bench.sh --write\`; each section is replaced when its part is run again with \`--write\`." >"$md"
    fi
    if grep -qF "$begin" "$md"; then
        awk -v b="$begin" -v e="$end" -v f="$3" '
            $0 == b { print; while ((getline line < f) > 0) print line; skip = 1; next }
            $0 == e { skip = 0 }
            !skip' "$md" >"$md.new"
    else
        { cat "$md"; echo; echo "$begin"; cat "$3"; echo "$end"; } >"$md.new"
    fi
    mv "$md.new" "$md"
    echo "wrote section '$2' of $md" >&2
}

# publish NAME FILE: adds section NAME to the report, and with --write to the tracked BENCHMARKS.md.
publish() {
    replace_section "$report" "$1" "$2"
    [ "$write" -eq 0 ] || replace_section BENCHMARKS.md "$1" "$2"
}

# ---------------------------------------------------------------------------------------------
throughput() {
    echo "== throughput: $rounds round(s) x clients {$concurrencies} x {full, resumed}, ${duration}s each" >&2
    servers=$peers
    declare -A pids ports
    for s in $servers; do
        case "$s" in
            securesock) start_securesock securesock ;;
            nginx) start_nginx nginx 2 ;;
            nginx-1w) start_nginx nginx-1w 1 ;;
            stunnel) start_stunnel stunnel ;;
        esac
        pids[$s]=$pid
        ports[$s]=$port
    done

    # Each peer must pass the same check before it is measured. Where the groups start with the
    # post-quantum hybrid, each must also negotiate it with a client on the library's default
    # groups, as securesock-bench's are.
    for s in $servers; do
        "$bench" "127.0.0.1:${ports[$s]}" --ca "$cert" -n 3 --json >"$work/check.json" ||
            { echo "bench.sh: $s fails the greeting check:" >&2; cat "$work/check.json" >&2; exit 1; }
        case "$groups" in
            X25519MLKEM768:*)
                got=$(openssl s_client -connect "127.0.0.1:${ports[$s]}" -brief </dev/null 2>&1 |
                    sed -n 's/^Negotiated TLS1.3 group: //p')
                [ "$got" = X25519MLKEM768 ] || { echo "bench.sh: $s negotiates '${got:-no KEM group}', not X25519MLKEM768" >&2; exit 1; }
                ;;
        esac
    done

    results=$work/throughput.jsonl
    : >"$results"
    # Other jobs on the box move every figure: the run says how busy the box was around it.
    load_start=$(cut -d' ' -f1-3 /proc/loadavg)
    for round in $(seq 1 "$rounds"); do
        for c in $concurrencies; do
            for resume in false true; do
                flag=""
                [ "$resume" = true ] && flag=--resume
                # Alternate the peers within each cell so drift (thermal, noisy neighbours) hits all.
                for s in $servers; do
                    before=$(cpu_ticks "${pids[$s]}")
                    # shellcheck disable=SC2086 # $flag is empty or one word
                    "$bench" "127.0.0.1:${ports[$s]}" --insecure -c "$c" -d "$duration" $flag --json >"$work/run.json" || true
                    after=$(cpu_ticks "${pids[$s]}")
                    jq -c --arg s "$s" --argjson r "$round" --argjson t "$((after - before))" --argjson tck "$tck" \
                        '. + {server: $s, round: $r,
                              server_cpu_us: (if .ok > 0 then $t * 1000000 / $tck / .ok else null end)}' \
                        "$work/run.json" >>"$results"
                    jq -r '"  \(.server) c=\(.concurrency) resume=\(.resume) round \(.round): \(.conns_per_s | floor) conns/s, p99 \(.latency_us.p99 / 1000) ms, failed \(.failed)"' \
                        <(tail -n 1 "$results") >&2
                done
            done
        done
    done
    load_end=$(cut -d' ' -f1-3 /proc/loadavg)
    for s in $servers; do
        echo "$s $(mem_kb "${pids[$s]}" VmHWM)"
    done >"$work/hwm.txt"
    for s in $servers; do
        stop "${pids[$s]}"
    done
    # The plain greeter behind stunnel, when stunnel was a peer.
    [ -z "${greeter_pid:-}" ] || stop "$greeter_pid"

    # Medians per server, clients and mode, with each one's ratio to nginx (2 workers).
    # Every round's pairing of securesock with nginx (2 workers), measured back to back in a cell.
    jq -s -r '
        def r(x): if x == null then "-" else (x * 100 | round / 100 | tostring) end;
        group_by([.resume, .concurrency, .round])
        | map((map(select(.server == "securesock")) | first) as $a | (map(select(.server == "nginx")) | first) as $b
            | select($a != null and $b != null)
            | "| \(if $a.resume then "resumed" else "full" end) | \($a.concurrency) | \($a.round) | \($a.conns_per_s | floor) | \($b.conns_per_s | floor) | \(if $b.conns_per_s > 0 then r($a.conns_per_s / $b.conns_per_s) else "-" end) | \($a.latency_us.p99 / 100 | round / 10) | \($b.latency_us.p99 / 100 | round / 10) |")
        | .[]' "$results" >"$work/pairs.md"

    jq -s -r "$jq_median"'
        def r(x): if x == null then "-" else (x * 10 | round / 10 | tostring) end;
        group_by([.resume, .concurrency, .server]) | map({
            resume: .[0].resume, concurrency: .[0].concurrency, server: .[0].server,
            rate: (map(.conns_per_s) | median),
            p50: (map(.latency_us.p50) | median / 1000), p99: (map(.latency_us.p99) | median / 1000),
            cpu: (map(.server_cpu_us | select(. != null)) | median),
            client: (map(.client_cpu_us_per_conn) | median),
            resumed: (map(.resumed_pct) | median),
            failed: (map(.failed) | add), ok: (map(.ok) | add),
            protocol: .[0].protocol, cipher: .[0].cipher }) as $rows
        | ($rows | map(select(.server == "nginx")) | map({key: "\(.resume)/\(.concurrency)", value: .}) | from_entries) as $ng
        | $rows | sort_by(.resume, .concurrency, (.server as $sv | ["securesock", "nginx", "nginx-1w", "stunnel"] | index($sv)))
        | .[] | . as $x | $ng["\(.resume)/\(.concurrency)"] as $n
        | [ (if .resume then "resumed" else "full" end), .concurrency, .server,
            (.rate | floor), (if $n.rate > 0 then r(.rate / $n.rate) else "-" end),
            r(.p50), r(.p99), r(.cpu), (if $n.cpu != null and .cpu != null and $n.cpu > 0 then r(.cpu / $n.cpu) else "-" end),
            r(.client), r(.resumed), .failed, .ok ] | @tsv' "$results" >"$work/medians.tsv"

    {
        if [ -n "$suite" ]; then
            echo "## Handshake throughput on $suite (OpenSSL $(openssl version | cut -d' ' -f2), greet mode)"
        else
            echo "## Handshake throughput (greet mode)"
        fi
        echo
        versions
        echo "- command: \`$command_line\` ($rounds round(s), ${duration} s per run, peers alternated within each cell: ${servers// /, })"
        if [ "$servers" = "securesock nginx nginx-1w stunnel" ]; then
            echo "- peers: securesock (thread per connection, default flags, info log to a file); nginx stream \`return\` with Mozilla's intermediate v6.0 settings (session cache on, tickets off, as Mozilla's generator writes), 2 workers and 1 worker; stunnel (its default logging) in front of \`examples/plain-greeter.rs\` (plaintext, not counted in stunnel's CPU)"
        else
            echo "- peers: securesock (thread per connection, default flags, info log to a file); nginx stream \`return\` with Mozilla's intermediate v6.0 settings (session cache on, tickets off, as Mozilla's generator writes), 2 workers"
        fi
        case "$groups" in
            X25519MLKEM768:*) echo "- key exchange: every peer negotiates X25519MLKEM768 with a client on OpenSSL's default groups (checked with \`openssl s_client -brief\` before the runs); securesock-bench uses those defaults" ;;
        esac
        echo "- client: \`securesock-bench --insecure -c CLIENTS -d ${duration} [--resume]\` on the same 2 cores; each run's protocol: $(jq -r -s 'map(.protocol) | unique | join(", ")' "$results"), cipher: $(jq -r -s 'map(.cipher) | unique | join(", ")' "$results")"
        echo "- server CPU: utime+stime from /proc/PID/stat of the server's processes (nginx: master + workers) over the run ÷ successful connections; medians over the rounds; ratios are to nginx with 2 workers"
        echo "- load average (1, 5, 15 min) when the runs started: $load_start; when they ended: $load_end ($(nproc) cores)"
        echo
        echo "| mode | clients | server | conns/s | ×nginx | p50 ms | p99 ms | server CPU µs/conn | ×nginx | client CPU µs/conn | resumed % | failed | ok |"
        echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        awk -F'\t' -v OFS=' | ' '{ $1 = $1; print "| " $0 " |" }' "$work/medians.tsv"
        echo
        echo "Peak RSS over the whole run (VmHWM, summed over each server's processes):"
        echo
        echo "| server | peak RSS MiB |"
        echo "|---|---:|"
        awk '{ printf "| %s | %.1f |\n", $1, $2 / 1024 }' "$work/hwm.txt"
        if [ -s "$work/pairs.md" ]; then
            echo
            echo "Every round, securesock and nginx (2 workers) back to back in the same cell:"
            echo
            echo "| mode | clients | round | securesock conns/s | nginx conns/s | ×nginx | securesock p99 ms | nginx p99 ms |"
            echo "|---|---:|---:|---:|---:|---:|---:|---:|"
            cat "$work/pairs.md"
        fi
        echo
        echo "![conns/s and p99 by clients](docs/bench-throughput$section_suffix.png)"
    } >"$work/throughput.md"

    chart "$work/medians.tsv"
    cat "$work/throughput.md"
    # The section links docs/bench-throughput.png, which resolves beside either BENCHMARKS.md.
    cp "$work/chart.png" "$out/docs/bench-throughput$section_suffix.png"
    if [ "$write" -eq 1 ]; then
        mkdir -p docs
        cp "$work/chart.png" "docs/bench-throughput$section_suffix.png"
    fi
    publish "throughput$section_suffix" "$work/throughput.md"
}

# chart MEDIANS.TSV: conns/s and p99 against clients, one line per server, full and resumed.
chart() {
    rate_plot=""
    p99_plot=""
    for mode in full resumed; do
        dash=1
        [ "$mode" = resumed ] && dash=2
        for s in $peers; do
            dat=$work/plot-$mode-$s.dat
            awk -F'\t' -v m="$mode" -v s="$s" '$1 == m && $3 == s { print $2, $4, $7 }' "$1" >"$dat"
            rate_plot="$rate_plot${rate_plot:+, }'$dat' using 1:2 with linespoints dt $dash title '$s $mode'"
            p99_plot="$p99_plot${p99_plot:+, }'$dat' using 1:3 with linespoints dt $dash title '$s $mode'"
        done
    done
    gnuplot <<EOF
set terminal pngcairo size 1200,500 noenhanced
set output '$work/chart.png'
set multiplot layout 1,2 title '${peers// / vs } ($(nproc) cores, loopback, medians${suite:+, $suite})'
set logscale x 2
set xlabel 'concurrent clients'
set key left top font ',8'
set yrange [0:*]
set ylabel 'connections/s'
plot $rate_plot
set ylabel 'p99 latency (ms)'
plot $p99_plot
unset multiplot
EOF
}

# ---------------------------------------------------------------------------------------------
# forward: one TLS connection moving $bulk_bytes up, then down, through each forwarder to the
# plaintext upstream of examples/bulk.rs; MB/s as the client sees it, server CPU per GiB.
forward() {
    echo "== forward: $rounds round(s) x client chunk {$bulk_chunks} x upstream chunk {$bulk_chunks} x {up, down} x 1 connection of $bulk_bytes bytes" >&2
    "$bin/examples/bulk" upstream 127.0.0.1:0 2>"$work/bulk-upstream.log" &
    up_pid=$!
    started_pids="$started_pids $up_pid"
    wait_for logged_listening "$work/bulk-upstream.log"
    up_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/bulk-upstream.log" | head -n 1)
    # Kernel TLS needs the kernel's `tls` upper-layer protocol and a libssl built with KTLS.
    if grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null; then
        ktls="the kernel offers the \`tls\` ULP"
    else
        ktls="unavailable: this kernel offers no \`tls\` ULP (/proc/sys/net/ipv4/tcp_available_ulp: $(cat /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null || echo none)$(zcat /proc/config.gz 2>/dev/null | grep -q '^# CONFIG_TLS is not set' && echo '; CONFIG_TLS is not set'))"
    fi
    if strings "$(ldconfig -p | awk '/libssl\.so\.3 / {print $NF; exit}')" 2>/dev/null | grep -qx KTLS; then
        ktls="$ktls; Debian's libssl3 is built with KTLS"
    fi
    servers="securesock nginx stunnel"
    declare -A pids ports
    start_securesock securesock-fwd --mode forward --upstream "127.0.0.1:$up_port"; pids[securesock]=$pid; ports[securesock]=$port
    start_nginx nginx-fwd 2 "$up_port"; pids[nginx]=$pid; ports[nginx]=$port
    start_stunnel stunnel-fwd "$up_port"; pids[stunnel]=$pid; ports[stunnel]=$port
    results=$work/forward.jsonl
    : >"$results"
    # The box is shared: the load says how far to trust the figures.
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "  load average (1, 5, 15 min) before: $load_before" >&2
    for round in $(seq 1 "$rounds"); do
        for cc in $bulk_chunks; do
            for uc in $bulk_chunks; do
                for dir in up down; do
                    for s in $servers; do
                        before=$(cpu_ticks "${pids[$s]}")
                        if ! "$bin/examples/bulk" "$dir" "127.0.0.1:${ports[$s]}" "$bulk_bytes" "$cc" "$uc" >"$work/bulk.json" 2>"$work/bulk.err"; then
                            echo "bench.sh: forward $dir through $s (chunks $cc/$uc) failed: $(cat "$work/bulk.err")" >&2
                            continue
                        fi
                        after=$(cpu_ticks "${pids[$s]}")
                        jq -c --arg s "$s" --argjson t "$((after - before))" --argjson tck "$tck" \
                            '. + {server: $s, cpu_s_per_gib: ($t / $tck / (.bytes / 1073741824))}' "$work/bulk.json" >>"$results"
                        jq -r '"  \(.server) \(.direction) client \(.client_chunk / 1024) KiB, upstream \(.upstream_chunk / 1024) KiB: \(.mb_per_s) MB/s, \(.cpu_s_per_gib * 100 | round / 100) CPU s/GiB"' <(tail -n 1 "$results") >&2
                    done
                done
            done
        done
    done
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "  load average (1, 5, 15 min) after: $load_after" >&2
    for s in $servers; do
        stop "${pids[$s]}"
    done
    stop "$up_pid"
    jq -s -r "$jq_median"'
        def r(x): if x == null then "-" else (x * 100 | round / 100 | tostring) end;
        def kib(x): "\(x / 1024) KiB";
        group_by([.client_chunk, .upstream_chunk]) | sort_by(-.[0].client_chunk, -.[0].upstream_chunk) | .[]
        | group_by([.server, .direction]) | map({server: .[0].server, direction: .[0].direction,
            cc: .[0].client_chunk, uc: .[0].upstream_chunk,
            mbs: (map(.mb_per_s) | median), cpu: (map(.cpu_s_per_gib) | median), runs: length})
        | (map(select(.server == "nginx")) | map({key: .direction, value: .}) | from_entries) as $ng
        | group_by(.server) | sort_by(.[0].server as $sv | ["securesock", "nginx", "stunnel"] | index($sv))
        | .[] | (map({key: .direction, value: .}) | from_entries) as $x
        | [ kib(.[0].cc), kib(.[0].uc), .[0].server,
            ($x.up.mbs | floor), r($x.up.mbs / $ng.up.mbs), r($x.up.cpu), r($x.up.cpu / $ng.up.cpu),
            ($x.down.mbs | floor), r($x.down.mbs / $ng.down.mbs), r($x.down.cpu), r($x.down.cpu / $ng.down.cpu),
            $x.up.runs + $x.down.runs ] | @tsv' "$results" >"$work/forward.tsv"
    {
        echo "## Forward mode: bulk transfer on one connection"
        echo
        versions
        echo "- command: \`$command_line\` ($rounds round(s), peers alternated within each direction); load average (1, 5, 15 min) $load_before before, $load_after after ($(nproc) cores, shared with other builds)"
        echo "- one TLS 1.3 connection per run: \`examples/bulk.rs\` sends $bulk_bytes bytes up (the upstream counts them to EOF and answers with the count) or asks for $bulk_bytes bytes down; the clock runs from connect to the last byte; every pairing of the client's \`SSL_read\`/\`SSL_write\` size and the upstream's \`read\`/\`write\` size in {256 KiB, 16 KiB} (\`bulk up|down ADDR BYTES CHUNK UPSTREAM-CHUNK\`), rounds interleaved: each round runs every pairing, direction and peer once"
        echo "- peers: securesock \`--mode forward --upstream\`; nginx stream \`proxy_pass\` with \`proxy_half_close on\` (2 workers, default \`proxy_buffer_size\` 16k); stunnel \`connect =\`; all with the same certificate and Mozilla intermediate v6.0 settings as above"
        echo "- server CPU: utime+stime of the forwarder's processes over the run ÷ GiB moved; medians over the rounds; ratios are to nginx"
        echo "- kernel TLS offload: $ktls"
        echo
        echo "| client chunk | upstream chunk | server | up MB/s | ×nginx | up CPU s/GiB | ×nginx | down MB/s | ×nginx | down CPU s/GiB | ×nginx | runs |"
        echo "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        awk -F'\t' -v OFS=' | ' '{ $1 = $1; print "| " $0 " |" }' "$work/forward.tsv"
    } >"$work/forward.md"
    cat "$work/forward.md"
    publish forward "$work/forward.md"
}

# ---------------------------------------------------------------------------------------------
# start_stunnel_client NAME UPSTREAM-PORT: stunnel in client mode (plaintext in, TLS out), verifying
# the upstream as securesock's client mode does: the test certificate as the only trust anchor, the
# IP address checked against the certificate, Mozilla intermediate v6.0 from the client's side.
start_stunnel_client() {
    name=$1
    free_port
    cat >"$work/$name.conf" <<EOF
foreground = quiet
syslog = no
output = $work/$name.log
pid =
[client]
client = yes
accept = 127.0.0.1:$port
connect = 127.0.0.1:$2
CAfile = $cert
verifyChain = yes
checkIP = 127.0.0.1
sslVersionMin = TLSv1.2
ciphers = $tls12_ciphers
ciphersuites = $tls13_suites
curves = $groups
EOF
    stunnel "$work/$name.conf" &
    pid=$!
    started_pids="$started_pids $pid"
    wait_for port_open "$port"
}

# client: plaintext load through each TLS client to a TLS greet upstream. Full handshakes go to an
# nginx upstream with neither session cache nor tickets (nothing can resume); resumed ones to a
# securesock greet upstream of each client's own (tickets on), whose log says how many resumed.
# Only the TLS client's CPU is counted.
client_section() {
    echo "== client mode: $rounds round(s) x clients {$concurrencies} x {full, resumed}, ${duration}s each" >&2
    peers="securesock stunnel"
    declare -A pids ports resume_up
    nginx_session_cache=off start_nginx client-up-full 2
    full_up=$port
    up_pids=$pid
    for s in $peers; do
        start_securesock "client-up-$s"
        resume_up[$s]=$port
        up_pids="$up_pids $pid"
    done
    for kind in full resumed; do
        for s in $peers; do
            up=$full_up
            [ "$kind" = resumed ] && up=${resume_up[$s]}
            if [ "$s" = securesock ]; then
                start_securesock "client-$kind" --mode client --upstream "127.0.0.1:$up" --upstream-ca "$cert"
            else
                start_stunnel_client "stunnel-client-$kind" "$up"
            fi
            pids[$s-$kind]=$pid
            ports[$s-$kind]=$port
            "$bench" "127.0.0.1:$port" --plaintext -n 3 --json >"$work/check.json" ||
                { echo "bench.sh: the $s client ($kind) fails the greeting check:" >&2; cat "$work/check.json" >&2; exit 1; }
        done
    done

    results=$work/client.jsonl
    : >"$results"
    for round in $(seq 1 "$rounds"); do
        for c in $concurrencies; do
            for kind in full resumed; do
                # Alternate the peers within each cell so drift hits both.
                for s in $peers; do
                    p=${pids[$s-$kind]}
                    before=$(cpu_ticks "$p")
                    "$bench" "127.0.0.1:${ports[$s-$kind]}" --plaintext -c "$c" -d "$duration" --json >"$work/run.json" || true
                    after=$(cpu_ticks "$p")
                    jq -c --arg s "$s" --arg k "$kind" --argjson r "$round" --argjson t "$((after - before))" --argjson tck "$tck" \
                        '. + {server: $s, kind: $k, round: $r,
                              server_cpu_us: (if .ok > 0 then $t * 1000000 / $tck / .ok else null end)}' \
                        "$work/run.json" >>"$results"
                    jq -r '"  \(.server) client c=\(.concurrency) \(.kind) round \(.round): \(.conns_per_s | floor) conns/s, p99 \(.latency_us.p99 / 1000) ms, \(.server_cpu_us // 0 | floor) µs CPU/conn, failed \(.failed)"' \
                        <(tail -n 1 "$results") >&2
                done
            done
        done
    done
    for key in "${!pids[@]}"; do
        stop "${pids[$key]}"
    done
    for p in $up_pids; do
        stop "$p"
    done
    # What the resuming upstreams saw: resumed handshakes among all they completed.
    resumed_pct() { # LOG
        awk '/ conn / && /result=ok/ { n++; if (/resumed=yes/) r++ } END { if (n) printf "%.1f", 100 * r / n; else print "-" }' "$1"
    }
    resumed_securesock=$(resumed_pct "$work/client-up-securesock.log")
    resumed_stunnel=$(resumed_pct "$work/client-up-stunnel.log")

    # Medians per kind, clients and peer, with securesock's ratios to stunnel and the goal's verdict
    # (at least 1.5x stunnel's conns/s at no more than 0.7x its CPU per connection).
    jq -s -r "$jq_median"'
        def r(x): if x == null then "-" else (x * 100 | round / 100 | tostring) end;
        group_by([.kind, .concurrency, .server]) | map({
            kind: .[0].kind, concurrency: .[0].concurrency, server: .[0].server,
            rate: (map(.conns_per_s) | median),
            p50: (map(.latency_us.p50) | median / 1000), p99: (map(.latency_us.p99) | median / 1000),
            cpu: (map(.server_cpu_us | select(. != null)) | median),
            failed: (map(.failed) | add), ok: (map(.ok) | add) }) as $rows
        | ($rows | map(select(.server == "stunnel")) | map({key: "\(.kind)/\(.concurrency)", value: .}) | from_entries) as $st
        | $rows | sort_by((.kind != "full"), .concurrency, (.server != "securesock"))
        | .[] | $st["\(.kind)/\(.concurrency)"] as $n
        | (if $n.rate > 0 then .rate / $n.rate else null end) as $xr
        | (if $n.cpu != null and .cpu != null and $n.cpu > 0 then .cpu / $n.cpu else null end) as $xc
        | [ .kind, .concurrency, .server, (.rate | floor), r($xr), r(.p50), r(.p99), r(.cpu), r($xc),
            .failed, .ok,
            (if .server == "stunnel" then "" elif $xr != null and $xc != null and $xr >= 1.5 and $xc <= 0.7 then "met" else "not met" end) ] | @tsv' \
        "$results" >"$work/client.tsv"
    {
        echo "## Client mode: plaintext in, TLS out"
        echo
        versions
        echo "- command: \`$command_line\` ($rounds round(s), ${duration} s per run, peers alternated within each cell)"
        echo "- load: \`securesock-bench --plaintext -c CLIENTS -d ${duration}\`: a plaintext TCP connection, the greeting, a clean EOF; the TLS client in between connects to the upstream, verifies it and relays"
        echo "- peers: securesock \`--mode client --upstream 127.0.0.1:PORT --upstream-ca CERT\` (the upstream's IP checked against its certificate); stunnel \`client = yes\` with \`CAfile\`, \`verifyChain = yes\`, \`checkIP = 127.0.0.1\`; both with Mozilla intermediate v6.0 from the client's side"
        echo "- upstreams: **full** handshakes go to nginx stream \`return\` with \`ssl_session_cache off\` and \`ssl_session_tickets off\` (2 workers; nothing can resume); **resumed** ones to a securesock greet server per peer (TLS 1.3 tickets), whose logs count the resumed handshakes: securesock client ${resumed_securesock} %, stunnel client ${resumed_stunnel} % of the connections they completed"
        echo "- CPU: utime+stime of the TLS client's process over the run ÷ successful connections (the upstream's and the load generator's are not counted); medians over the rounds; × is securesock ÷ stunnel"
        echo "- goal: at least 1.5× stunnel's conns/s at no more than 0.7× its CPU per connection"
        echo
        echo "| handshake | clients | peer | conns/s | ×stunnel | p50 ms | p99 ms | CPU µs/conn | ×stunnel | failed | ok | goal |"
        echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        awk -F'\t' -v OFS=' | ' '{ $1 = $1; print "| " $0 " |" }' "$work/client.tsv"
    } >"$work/client.md"
    cat "$work/client.md"
    publish client "$work/client.md"
}

# ---------------------------------------------------------------------------------------------
# idle_probe NAME PID PORT: holds $idle_k idle connections, then measures memory, accept time and
# a second client's service. Appends a table row to $work/idle-rows.md.
idle_probe() {
    name=$1 server_pid=$2 server_port=$3
    rss0=$(mem_kb "$server_pid" VmRSS)
    fds0=$(fd_count "$server_pid")
    t0=$(date +%s%N)
    "$bench" "127.0.0.1:$server_port" --idle "$idle_k" -c 4 --hold 600 --json >"$work/idle-$name.json" &
    holder=$!
    started_pids="$started_pids $holder"
    wait_for grep -q '"mode":"idle"' "$work/idle-$name.json"
    # Accepted = the server holds a descriptor for each (polled every 10 ms, so ±10 ms).
    tries=3000
    while [ "$(fd_count "$server_pid")" -lt $((fds0 + idle_k)) ] && [ "$tries" -gt 0 ]; do
        sleep 0.01
        tries=$((tries - 1))
    done
    t1=$(date +%s%N)
    accepted=$(( $(fd_count "$server_pid") - fds0 ))
    rss1=$(mem_kb "$server_pid" VmRSS)
    "$bench" 127.0.0.1:"$server_port" --source 127.0.0.2 --insecure -n 20 --json >"$work/probe-$name.json" || true
    probe_max=$(jq '.latency_us.max / 1000' "$work/probe-$name.json")
    probe_ok=$(jq '.ok' "$work/probe-$name.json")
    served=no
    if [ "$probe_ok" -eq 20 ] && jq -e '.latency_us.max < 50000' "$work/probe-$name.json" >/dev/null; then
        served=yes
    fi
    stop "$holder"
    jq -r --arg n "$name" --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson k "$idle_k" \
        --argjson acc "$accepted" --argjson ms "$(( (t1 - t0) / 1000000 ))" \
        --arg served "$served" --argjson pmax "$probe_max" --argjson pok "$probe_ok" \
        '"| \($n) | \($k) | \(.connected) | \(.burst_ms | round) | \($acc) in ≤ \($ms) | \($rss0 / 1024 * 10 | round / 10) | \($rss1 / 1024 * 10 | round / 10) | \(($rss1 - $rss0) / $k * 10 | round / 10) | \($served) (\($pok)/20 ok, max \($pmax * 10 | round / 10) ms) |"' \
        <(head -n 1 "$work/idle-$name.json") >>"$work/idle-rows.md"
    tail -n 1 "$work/idle-rows.md" >&2
}

idle_memory() {
    echo "== idle memory: $idle_k idle connections from 127.0.0.1, a client from 127.0.0.2" >&2
    : >"$work/idle-rows.md"
    start_securesock securesock-idle --max-per-ip 10000 --max-connections 20000
    idle_probe securesock "$pid" "$port"
    stop "$pid"
    start_nginx nginx-idle 2
    idle_probe nginx "$pid" "$port"
    stop "$pid"
    {
        echo "## Idle connections: memory and fairness"
        echo
        versions
        echo "- command: \`$command_line\`"
        echo "- $idle_k TCP connections from 127.0.0.1 that never send a byte (\`securesock-bench --idle $idle_k -c 4\`), held while measuring; securesock runs with \`--max-per-ip 10000 --max-connections 20000 --handshake-timeout $handshake_timeout\`, nginx with 2 workers and \`ssl_handshake_timeout ${handshake_timeout}s\`"
        echo "- accepted: the server's open descriptors grew by this many, within this time from starting the burst (polled every 10 ms); RSS is VmRSS summed over the server's processes (nginx: master + workers, shared pages counted in each)"
        echo "- second client: 20 full handshakes from 127.0.0.2 while the burst is held; \"yes\" when all succeed with the slowest under 50 ms"
        echo
        echo "| server | idle asked | connected | client burst ms | accepted | RSS before MiB | RSS with idle MiB | KiB per idle conn | 127.0.0.2 served in 50 ms |"
        echo "|---|---:|---:|---:|---|---:|---:|---:|---|"
        cat "$work/idle-rows.md"
    } >"$work/idle.md"
    cat "$work/idle.md"
    publish idle-memory "$work/idle.md"
}

# ---------------------------------------------------------------------------------------------
# Kernel memory (kB) from /proc/meminfo: the whole box's, so other work moves it too.
meminfo_kb() { # FIELD
    awk -v f="$1:" '$1 == f {print $2}' /proc/meminfo
}
threads_of() { # PID
    for p in $(family "$1"); do
        awk '$1 == "Threads:" {print $2}' "/proc/$p/status" 2>/dev/null || true
    done | awk '{s += $1} END {print s + 0}'
}
# The kernel stack each thread costs: THREAD_SIZE, 16 KiB on x86-64 and arm64.
kstack_kb=16
# The most connections one load-generator process holds: each is a descriptor, under the box's
# hard limit of 20,000 open files per process.
per_holder=9500

# established_probe NAME SERVER-PID PORT N MODE: holds N established connections against the
# server (spread over load-generator processes), measures the server's memory before and with
# them, times a client from 127.0.0.2 meanwhile, and appends one JSON line to $work/established.jsonl.
established_probe() {
    name=$1 server_pid=$2 server_port=$3 n=$4 mode=$5
    rss0=$(mem_kb "$server_pid" VmRSS) pte0=$(mem_kb "$server_pid" VmPTE) thr0=$(threads_of "$server_pid")
    ks0=$(meminfo_kb KernelStack) pt0=$(meminfo_kb PageTables)
    holders=$(( (n + per_holder - 1) / per_holder ))
    hpids=""
    for h in $(seq 1 "$holders"); do
        share=$(( n / holders + (h <= n % holders ? 1 : 0) ))
        "$bench" "127.0.0.1:$server_port" --established "$share" -c 4 --hold 3600 --timeout 60 \
            --insecure --json >"$work/est-$name-$h.json" &
        hpids="$hpids $!"
        started_pids="$started_pids $!"
    done
    # 19,000 handshakes take a while on a busy 2-core box: up to 10 minutes.
    for h in $(seq 1 "$holders"); do
        wait_tries=12000 wait_for grep -qs '"mode":"established"' "$work/est-$name-$h.json"
    done
    connected=$(cat "$work"/est-"$name"-*.json | jq -s 'map(select(.mode == "established") | .connected) | add')
    # securesock gives back a quiet connection's buffers and stack after 0.5 s (relay::QUIET);
    # the measure is taken once every connection has been quiet for twice that.
    sleep 1
    rss1=$(mem_kb "$server_pid" VmRSS) pte1=$(mem_kb "$server_pid" VmPTE) thr1=$(threads_of "$server_pid")
    ks1=$(meminfo_kb KernelStack) pt1=$(meminfo_kb PageTables)
    # One after another, each timed from connect to its 16 bytes back.
    "$bench" "127.0.0.1:$server_port" --source 127.0.0.2 --established 20 -c 1 --hold 0.001 \
        --insecure --json >"$work/est-probe-$name.json" || true
    for h in $hpids; do
        stop "$h"
    done
    rm -f "$work"/est-"$name"-*.json
    jq -c --arg s "$name" --arg mode "$mode" --argjson n "$n" --argjson c "$connected" \
        --argjson rss "$((rss1 - rss0))" --argjson meminfo "$((ks1 - ks0 + pt1 - pt0))" \
        --argjson own "$(( (thr1 - thr0) * kstack_kb + pte1 - pte0 ))" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
        '{server: $s, mode: $mode, n: $n, connected: $c, load: $load,
          rss_kib: ($rss / $c), kernel_meminfo_kib: ($meminfo / $c), kernel_own_kib: ($own / $c),
          probe_ok: .connected, probe_max_ms: .slowest_ms, probe_errors: .errors}' <(head -n 1 "$work/est-probe-$name.json") \
        | tee -a "$work/established.jsonl" >&2
}

established() {
    echo "== established: $rounds round(s) x $established_n forward connections through each front; then $established_echo echo-mode and $established_fwd forward-mode ones against securesock" >&2
    "$bin/examples/echo-upstream" 127.0.0.1:0 2>"$work/echo-upstream.log" &
    up_pid=$!
    started_pids="$started_pids $up_pid"
    wait_for logged_listening "$work/echo-upstream.log"
    up_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/echo-upstream.log" | head -n 1)
    : >"$work/established.jsonl"
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    ss_flags=(--max-connections 20000 --max-per-ip 20000 --idle-timeout 3600)
    # What the systemd unit, the image and the Kubernetes manifest set: no per-thread malloc cache.
    packaged_env=$(sed -n 's/^Environment=\(GLIBC_TUNABLES=.*\)$/\1/p' packaging/securesock.service)
    for round in $(seq 1 "$rounds"); do
        echo "  round $round" >&2
        start_securesock securesock-est --mode forward --upstream "127.0.0.1:$up_port" "${ss_flags[@]}"
        established_probe securesock "$pid" "$port" "$established_n" forward
        stop "$pid"
        securesock_env=$packaged_env start_securesock securesock-est-packaged --mode forward --upstream "127.0.0.1:$up_port" "${ss_flags[@]}"
        established_probe securesock-packaged "$pid" "$port" "$established_n" forward
        stop "$pid"
        start_nginx nginx-est 1 "$up_port"
        established_probe nginx "$pid" "$port" "$established_n" forward
        stop "$pid"
        start_stunnel stunnel-est "$up_port"
        established_probe stunnel "$pid" "$port" "$established_n" forward
        stop "$pid"
    done
    securesock_env=$packaged_env start_securesock securesock-est-echo --mode echo "${ss_flags[@]}"
    grep -E 'WARN|warn' "$work/securesock-est-echo.log" >"$work/established-warnings.txt" || true
    established_probe securesock-echo "$pid" "$port" "$established_echo" echo
    stop "$pid"
    securesock_env=$packaged_env start_securesock securesock-est-fwd --mode forward --upstream "127.0.0.1:$up_port" "${ss_flags[@]}"
    established_probe securesock-forward "$pid" "$port" "$established_fwd" forward
    stop "$pid"
    stop "$up_pid"
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    r2='def r(x): if x == null then "-" else (x * 10 | round / 10 | tostring) end;'
    {
        echo "## Established idle connections: memory per connection"
        echo
        versions
        echo "- command: \`$command_line\`; load average (1, 5, 15 min) $load_before before, $load_after after (the box is shared with other builds)"
        echo "- each client (\`securesock-bench --established K -c 4\`) completes a TLS 1.3 handshake, sends 16 bytes, reads them back and stays open and silent; the upstream is \`examples/echo-upstream.rs\` (plaintext echo, one thread, epoll); at most $per_holder connections per load-generator process"
        echo "- fronts: securesock \`--mode forward --upstream\` (\`--max-connections 20000 --max-per-ip 20000 --idle-timeout 3600\`), as a bare binary and with \`$packaged_env\` in its environment as packaging/securesock.service, the image and the Kubernetes manifest set it (the tens-of-thousands runs use that too); nginx stream \`proxy_pass\` with 1 worker and \`proxy_half_close on\`; stunnel \`connect =\`; same certificate and settings as above"
        echo "- RSS: VmRSS summed over the front's processes with the connections held (measured 1 s after the last one was established) minus before, ÷ connections; kernel (/proc/meminfo): the change in KernelStack + PageTables of the whole box ÷ connections, which other work on the box moves too; kernel (own): the front's new threads × $kstack_kb KiB of kernel stack + the change in its VmPTE, ÷ connections; medians over the rounds; \"total\" is RSS + kernel (own)"
        echo "- 127.0.0.2: 20 more connections one after another (\`securesock-bench --source 127.0.0.2 --established 20 -c 1 --hold 0.001\`: connect, handshake, 16 bytes echoed) while the others are held; \"yes\" when all succeed with the slowest under 50 ms"
        echo
        echo "| front | connections | RSS KiB/conn | kernel (/proc/meminfo) KiB/conn | kernel (own) KiB/conn | total KiB/conn | total ×nginx | 127.0.0.2 served in 50 ms | rounds |"
        echo "|---|---:|---:|---:|---:|---:|---:|---|---:|"
        jq -s -r --arg env "$packaged_env" "$jq_median $r2"'
            map(select(.server == "securesock" or .server == "securesock-packaged" or .server == "nginx" or .server == "stunnel"))
            | group_by(.server) | map({server: .[0].server, n: (map(.connected) | min),
                rss: (map(.rss_kib) | median), mi: (map(.kernel_meminfo_kib) | median),
                own: (map(.kernel_own_kib) | median), total: (map(.rss_kib + .kernel_own_kib) | median),
                served: (map(select(.probe_ok == 20 and .probe_max_ms < 50)) | length), runs: length,
                pmax: (map(.probe_max_ms) | max)})
            | (map(select(.server == "nginx")) | .[0].total) as $ng
            | sort_by(.server as $s | ["securesock-packaged", "securesock", "nginx", "stunnel"] | index($s)) | .[]
            | .server |= (if . == "securesock-packaged" then "securesock, `\($env)`" else . end)
            | "| \(.server) | \(.n) | \(r(.rss)) | \(r(.mi)) | \(r(.own)) | \(r(.total)) | \(if $ng then r(.total / $ng) else "-" end) | \(if .served == .runs then "yes" else "no" end) (\(.served)/\(.runs) rounds, slowest \(r(.pmax)) ms) | \(.runs) |"' \
            "$work/established.jsonl"
        echo
        echo "Tens of thousands against securesock alone, one run each:"
        echo
        echo "| securesock mode | connections held | RSS KiB/conn | kernel (/proc/meminfo) KiB/conn | kernel (own) KiB/conn | total KiB/conn | 127.0.0.2 served in 50 ms | load average |"
        echo "|---|---:|---:|---:|---:|---:|---|---|"
        jq -s -r "$r2"'.[] | select(.server == "securesock-echo" or .server == "securesock-forward")
            | "| \(.mode) | \(.connected) of \(.n) | \(r(.rss_kib)) | \(r(.kernel_meminfo_kib)) | \(r(.kernel_own_kib)) | \(r(.rss_kib + .kernel_own_kib)) | \(if .probe_ok == 20 and .probe_max_ms < 50 then "yes" else "no" end) (\(.probe_ok)/20 ok, slowest \(r(.probe_max_ms)) ms) | \(.load) |"' \
            "$work/established.jsonl"
        if [ -s "$work/established-warnings.txt" ]; then
            echo
            echo "securesock's start-up warnings for the echo-mode run (\`--max-connections 20000\`):"
            echo
            sed 's/^/    /' "$work/established-warnings.txt"
        fi
    } >"$work/established.md"
    cat "$work/established.md"
    publish established "$work/established.md"
}

# ---------------------------------------------------------------------------------------------
soak() {
    echo "== soak: $soak_n connections against securesock, 16 clients" >&2
    start_securesock securesock-soak
    half=$((soak_n / 2))
    rest=$((soak_n - half))
    snapshot() { # LABEL CONNECTIONS FAILED
        echo "| $1 | $2 | $3 | $(awk '{printf "%.1f", $1 / 1024}' <<<"$(mem_kb "$pid" VmRSS)") | $(fd_count "$pid") | $(awk '/^Threads:/ {print $2}' "/proc/$pid/status") |"
    }
    {
        echo "| point | connections so far | failed so far | RSS MiB | open fds | threads |"
        echo "|---|---:|---:|---:|---:|---:|"
        snapshot start 0 0
    } >"$work/soak-rows.md"
    t0=$(date +%s)
    "$bench" "127.0.0.1:$port" --insecure -c 16 -n "$half" --json >"$work/soak1.json" || true
    f1=$(jq .failed "$work/soak1.json")
    snapshot middle "$half" "$f1" >>"$work/soak-rows.md"
    "$bench" "127.0.0.1:$port" --insecure -c 16 -n "$rest" --json >"$work/soak2.json" || true
    f2=$(( f1 + $(jq .failed "$work/soak2.json") ))
    snapshot end "$soak_n" "$f2" >>"$work/soak-rows.md"
    t1=$(date +%s)
    hwm=$(mem_kb "$pid" VmHWM)
    stop "$pid"
    {
        echo "## Soak: $soak_n connections"
        echo
        versions
        echo "- command: \`$command_line\`; 16 clients, full handshakes, $((t1 - t0)) s in all; peak RSS $(awk '{printf "%.1f", $1 / 1024}' <<<"$hwm") MiB"
        echo "- failures: $f2 ($(jq -c -s 'map(.errors) | add' "$work/soak1.json" "$work/soak2.json"))"
        echo
        cat "$work/soak-rows.md"
    } >"$work/soak.md"
    cat "$work/soak.md"
    publish soak "$work/soak.md"
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
