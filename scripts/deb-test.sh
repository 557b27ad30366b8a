#!/bin/bash
# Tests the Debian package the way an administrator meets it: builds target/debian/securesock_*.deb
# with scripts/build-deb.sh (cargo deb, with the man pages and completions the binary writes), boots a cached debootstrap root (bookworm, or the --suite given) with systemd in
# `systemd-nspawn --boot` (loopback only: --private-network; a throw-away tmpfs overlay:
# --volatile=overlay), installs the .deb there with dpkg, and checks that the unit is enabled and
# active, runs as an unprivileged dynamic user without capabilities, answers `openssl s_client` with
# the certificate postinst made, picks up a new certificate on `systemctl reload` (and fails it,
# still serving, when the certificate is broken), drains and exits 0
# on `systemctl stop`, and that purge removes it. A fresh install serves from
# /etc/securesock/securesock.toml (`--config`); `man securesock`, `man securesock.toml` and the bash
# completion work in the root. Then the upgrade: a previous version (this package as earlier
# versions were: no securesock.toml, the unit running plain `securesock` with the SECURESOCK_*
# settings of /etc/default/securesock) with an edited port is upgraded to this one, and still
# serves on that port from those settings; restoring the shipped default moves it to the file.
#
#   scripts/deb-test.sh [--suite bookworm|trixie]
#
# The root gets the package's Depends the way apt resolves them on that release (`apt-get satisfy`),
# so a Depends that cannot be met there (trixie's libssl3t64 instead of libssl3, say) fails the build
# of the root, and dpkg -i then checks them again offline.
#
# SECURESOCK_EXPECT_RELOAD=pass|fail (default pass: securesock reloads its certificate on SIGHUP,
# so `systemctl reload` must work). `fail` is only for checking an old build from before SIGHUP
# reload, where SIGHUP's default action kills the process; the expectation is always stated, never
# guessed from the binary, so a build that lost its reload cannot pass as an "expected failure".
# Needs root; installs debootstrap, systemd-container and (when missing) cargo-deb.
set -euo pipefail
cd "$(dirname "$0")/.."

suite=bookworm
while [ $# -gt 0 ]; do
    case "$1" in
        --suite) [ $# -ge 2 ] || { echo "deb-test.sh: --suite needs a value" >&2; exit 2; }; suite=$2; shift 2 ;;
        *) echo "deb-test.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
[ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap, systemd-nspawn)"
export PATH="$PATH:/usr/sbin:/sbin"
. scripts/common.sh
need_packages debootstrap systemd-container util-linux man-db groff-base
need_cargo
if ! cargo deb --version >/dev/null 2>&1; then
    echo "installing cargo-deb (once)" >&2
    cargo install --locked --quiet cargo-deb --version '^3.8'
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
echo "== deb test: scripts/build-deb.sh (cargo deb)"
deb=$(scripts/build-deb.sh --quiet 2>"$tmp/cargo-deb.log" | tail -n 1) || true
[ -f "$deb" ] || { cat "$tmp/cargo-deb.log" >&2; fail "cargo deb made no package"; }
case "$(basename "$deb")" in
    securesock_*_amd64.deb) ;;
    *) fail "unexpected package name $(basename "$deb")" ;;
esac
depends=$(dpkg-deb -f "$deb" Depends)
echo "   $(basename "$deb"): Depends: $depends"
case ", $depends," in
    *", libssl3 "*) ;;
    *) fail "Depends lacks libssl3" ;;
esac

# Where Debian expects them: the pages, the completions, the example file and the start script.
contents=$(dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's:^\./:/:')
for f in /etc/securesock/securesock.toml /etc/default/securesock /usr/share/securesock/securesock.default \
    /usr/libexec/securesock/securesock-start /usr/share/man/man1/securesock.1.gz \
    /usr/share/man/man5/securesock.toml.5.gz /usr/share/bash-completion/completions/securesock \
    /usr/share/zsh/vendor-completions/_securesock /usr/share/fish/vendor_completions.d/securesock.fish; do
    echo "$contents" | grep -qxF "$f" || fail "the package lacks $f"
done
conffiles=$(dpkg-deb -I "$deb" conffiles)
for f in /etc/securesock/securesock.toml /etc/default/securesock; do
    echo "$conffiles" | grep -qxF "$f" || fail "$f is not a conffile: $conffiles"
done
dpkg-deb -x "$deb" "$tmp/contents"
for page in man1/securesock.1.gz man5/securesock.toml.5.gz; do
    MANWIDTH=100 man -l "$tmp/contents/usr/share/man/$page" 2>"$tmp/man.err" >"$tmp/man.txt" ||
        fail "man -l $page: $(cat "$tmp/man.err")"
    [ ! -s "$tmp/man.err" ] || fail "man -l $page warned: $(cat "$tmp/man.err")"
done
echo "   conffiles $(echo "$conffiles" | paste -sd' ' -); man pages render (man -l); completions for bash, zsh, fish"

# The previous version, for the upgrade test: this package as earlier versions were (version
# 0.0.1; no securesock.toml and no start script; the unit runs plain /usr/bin/securesock, whose
# settings are then the SECURESOCK_* variables of /etc/default/securesock).
old=$tmp/old
dpkg-deb -R "$deb" "$old"
sed -i 's/^Version: .*/Version: 0.0.1/' "$old/DEBIAN/control"
rm -r "$old/etc/securesock" "$old/usr/libexec/securesock"
sed -i '\:^/etc/securesock/securesock.toml$:d' "$old/DEBIAN/conffiles"
old_unit=$(find "$old" -path '*/systemd/system/securesock.service')
[ -n "$old_unit" ] || fail "no securesock.service in the package"
sed -i 's:^ExecStart=.*:ExecStart=/usr/bin/securesock:' "$old_unit"
(cd "$old" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | xargs -0 md5sum >DEBIAN/md5sums)
dpkg-deb --root-owner-group -b "$old" "$tmp/securesock_0.0.1_amd64.deb" >/dev/null
old_pkg=/mnt/pkg/securesock_0.0.1_amd64.deb

# The root: systemd, plus what the .deb depends on as apt resolves it on this release (versions,
# alternatives and Provides included), so dpkg -i works offline and fails if the package asks for
# something that is not there.
printf 'apt-get update -qq\napt-get satisfy -y -q --no-install-recommends %s\nrm -rf /var/lib/apt/lists/*\n' \
    "'$depends'" >"$tmp/setup.sh"
root=$(scripts/rootfs.sh --name deb-systemd --suite "$suite" --include systemd,systemd-sysv,libnss-systemd,man-db \
    --setup "$tmp/setup.sh" | tail -n 1) || fail "$suite cannot meet the package's Depends ($depends), or its root could not be built"

nspawn_pid=""
leader=""
cleanup() {
    if [ -n "$nspawn_pid" ]; then
        # The container's init (its death ends the container and nspawn reaps it and exits); nspawn
        # itself only when the container has not started.
        if [ -n "$leader" ]; then
            kill -KILL "$leader" 2>/dev/null || true
        else
            kill -KILL "$nspawn_pid" 2>/dev/null || true
        fi
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
cp "$deb" "$tmp/"
rm -rf "$old" "$tmp/contents"
pkg=/mnt/pkg/$(basename "$deb")

echo "== deb test: booting $suite with systemd in systemd-nspawn"
# --register=no and --keep-unit: there is no systemd (nor D-Bus) on the host to register with.
systemd-nspawn -q -D "$root" --volatile=overlay --private-network --register=no --keep-unit \
    --bind-ro="$tmp:/mnt/pkg" --boot >"$tmp/console.log" 2>&1 &
nspawn_pid=$!

# The container's init: the systemd that nspawn started.
leader=""
deadline=$((SECONDS + 30))
while [ -z "$leader" ]; do
    leader=$(pgrep -P "$nspawn_pid" -x systemd || true)
    [ -n "$leader" ] && break
    if ! kill -0 "$nspawn_pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
        cat "$tmp/console.log" >&2
        fail "systemd-nspawn did not boot"
    fi
    sleep 0.1
done

# machine CMD...: runs CMD as root inside the booted container (all its namespaces).
machine() {
    timeout 60 nsenter -t "$leader" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}
# Polled: `is-system-running --wait` needs D-Bus, which a minimal root does not have; plain
# systemctl talks to systemd over its private socket.
deadline=$((SECONDS + 60))
while :; do
    state=$(machine systemctl is-system-running 2>/dev/null || true)
    case "$state" in
        running|degraded) echo "   booted: $state"; break ;;
    esac
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$nspawn_pid" 2>/dev/null; then
        cat "$tmp/console.log" >&2
        fail "the container did not finish booting: '$state'"
    fi
    sleep 0.2
done
[ "$state" = running ] || machine systemctl --failed --no-legend | sed 's/^/   failed unit: /'

# wait_journal TEXT: waits (15 s at most) for TEXT in the unit's journal.
wait_journal() {
    local deadline=$((SECONDS + 15))
    until machine journalctl -u securesock -o cat --no-pager | grep -qF -- "$1"; do
        [ $SECONDS -lt $deadline ] || { machine journalctl -u securesock --no-pager >&2; fail "no '$1' in the journal"; }
        sleep 0.1
    done
}
show() {
    machine systemctl show -p "$1" --value securesock
}

echo "== deb test: dpkg -i (postinst makes the certificate, enables and starts the unit)"
machine dpkg -i "$pkg" 2>&1 | sed 's/^/   dpkg: /' || fail "dpkg -i failed"
# Which package met the libssl3 dependency: libssl3 itself, or libssl3t64 through its Provides.
# shellcheck disable=SC2016 # a dpkg-query format, not a shell expansion
echo "   libssl on $suite: $(machine dpkg-query -W -f='${db:Status-Abbrev}${Package} ${Version}\n' 'libssl3*' | sed -n 's/^ii *//p' | paste -sd, -)"
[ "$(machine systemctl is-enabled securesock)" = enabled ] || fail "the unit is not enabled"
wait_journal "listening on"
[ "$(machine systemctl is-active securesock)" = active ] || fail "the unit is not active"
# The socket-activation unit is an example the admin opts in to: enabled, it would take the port.
[ "$(machine systemctl is-enabled securesock.socket 2>/dev/null || true)" != enabled ] ||
    fail "securesock.socket was enabled by the package"
echo "   securesock.service enabled and active; securesock.socket not enabled"

# cmdline PID: the process's arguments, space-separated.
cmdline() {
    machine cat "/proc/$1/cmdline" | tr '\0' ' ' | sed 's/ $//'
}
served_from=$(cmdline "$(show MainPID)")
[ "$served_from" = "/usr/bin/securesock --config /etc/securesock/securesock.toml" ] ||
    fail "a fresh install does not serve from the file: $served_from"
echo "   serving: $served_from"

[ "$(machine stat -c '%U:%G %a' /etc/securesock)" = "root:securesock-keys 750" ] || fail "/etc/securesock is not root:securesock-keys 0750"
[ "$(machine stat -c '%U:%G %a' /etc/securesock/server-key.pem)" = "root:securesock-keys 640" ] ||
    fail "the key is not root:securesock-keys 0640"
echo "   /etc/securesock root:securesock-keys 0750, key root:securesock-keys 0640"

pid=$(show MainPID)
status=$(machine cat "/proc/$pid/status")
field() {
    echo "$status" | awk -v f="$1:" '$1 == f { $1 = ""; sub(/^ /, ""); print }'
}
uid=$(field Uid | awk '{ print $1 }')
[ "$uid" -ne 0 ] || fail "the service runs as root"
[ "$(field Uid | tr -s '\t ' ' ')" = "$uid $uid $uid $uid" ] || fail "mixed user IDs: $(field Uid)"
[ "$(field CapEff)" = 0000000000000000 ] || fail "has effective capabilities $(field CapEff)"
[ "$(field CapBnd)" = 0000000000000000 ] || fail "has a capability bounding set $(field CapBnd)"
[ "$(field NoNewPrivs)" = 1 ] || fail "NoNewPrivs is not set"
group=$(machine getent group securesock-keys | cut -d: -f3)
echo " $(field Groups) " | grep -q " $group " || fail "not in the securesock-keys group ($group): $(field Groups)"
user=$(machine getent passwd "$uid" | cut -d: -f1 || true)
echo "   MainPID $pid runs as uid $uid (${user:-no name}), groups $(field Groups), no capabilities, NoNewPrivs"

check() {
    machine /usr/share/securesock/check.sh "127.0.0.1:${1:-12345}" --ca /etc/securesock/server-cert.pem
}
check | sed 's/^/   check.sh: /' || fail "openssl s_client check failed"
# The connection's line names the file's service.
wait_journal "service=greet mode=greet"

echo "== deb test: man securesock, man securesock.toml, bash completion"
machine env MANPAGER=cat MANWIDTH=100 man securesock | grep -q -- '--upstream-resolve' || fail "man securesock"
machine env MANPAGER=cat MANWIDTH=100 man 5 securesock.toml | grep -qF '[[service.route]]' || fail "man 5 securesock.toml"
machine bash -c '. /usr/share/bash-completion/completions/securesock && complete -p securesock' >/dev/null ||
    fail "the bash completion does not load"
echo "   man securesock, man 5 securesock.toml and the bash completion work"

# The certificate the server presents now, as a SHA-256 fingerprint.
presented() {
    machine sh -c 'openssl s_client -connect 127.0.0.1:12345 </dev/null 2>/dev/null |
        openssl x509 -noout -fingerprint -sha256 2>/dev/null' || true
}

echo "== deb test: systemctl reload after replacing the certificate"
expect=${SECURESOCK_EXPECT_RELOAD:-pass}
case "$expect" in
    pass|fail) ;;
    *) fail "SECURESOCK_EXPECT_RELOAD must be pass or fail, not '$expect'" ;;
esac
machine sh -ec '
    /usr/share/securesock/gen-certs.sh --out /etc/securesock --name rotated.example --force >/dev/null
    chgrp securesock-keys /etc/securesock/server-key.pem
    chmod 0640 /etc/securesock/server-key.pem'
new=$(machine openssl x509 -in /etc/securesock/server-cert.pem -noout -fingerprint -sha256)
machine systemctl reload securesock
# Done when the server presents the new certificate, failed when the process did not survive.
reload_ok=0
deadline=$((SECONDS + 10))
while :; do
    if [ "$(machine systemctl is-active securesock || true)" != active ] || [ "$(show MainPID)" != "$pid" ]; then
        how="exited with status $(show ExecMainStatus)"
        [ "$(show ExecMainCode)" != 2 ] || how="was killed by signal $(show ExecMainStatus)"
        why="the process did not survive SIGHUP: it $how; unit $(machine systemctl is-active securesock || true), MainPID $pid -> $(show MainPID)"
        break
    fi
    if [ "$(presented)" = "$new" ]; then
        reload_ok=1
        break
    fi
    if [ $SECONDS -ge $deadline ]; then
        why="the server still presents the old certificate 10 s after reload"
        break
    fi
    sleep 0.1
done
if [ "$reload_ok" -eq 1 ]; then
    [ "$(show NRestarts)" = 0 ] || fail "reload: the unit restarted $(show NRestarts) time(s)"
    check | grep -q '^OK$' || fail "check after reload failed"
    [ "$expect" = pass ] || fail "reload worked but SECURESOCK_EXPECT_RELOAD=$expect"
    echo "   reload: same MainPID $pid, new certificate presented, check OK"
else
    [ "$expect" = fail ] || fail "reload: $why"
    echo "   EXPECTED FAILURE (SECURESOCK_EXPECT_RELOAD=fail): reload: $why"
    # Bring it back so the stop test below still has a server to stop.
    machine systemctl restart securesock
    deadline=$((SECONDS + 15))
    until [ "$(presented)" = "$new" ]; do
        [ $SECONDS -lt $deadline ] || fail "the restarted server does not present the new certificate"
        sleep 0.1
    done
    pid=$(show MainPID)
fi

if [ "$expect" = pass ]; then
    echo "== deb test: systemctl reload with a broken certificate fails and keeps serving"
    machine sh -ec 'cp /etc/securesock/server-cert.pem /root/good-cert.pem
        echo "not a certificate" >/etc/securesock/server-cert.pem'
    if machine systemctl reload securesock >"$tmp/reload.out" 2>&1; then
        fail "systemctl reload succeeded with a broken certificate"
    fi
    machine journalctl -u securesock -o cat --no-pager | grep -q 'still serving the previous configuration' ||
        fail "the failed reload's answer is not in the journal"
    [ "$(presented)" = "$new" ] || fail "after a failed reload the server no longer presents the certificate it had"
    [ "$(show MainPID)" = "$pid" ] || fail "the failed reload restarted the server"
    machine sh -ec 'cp /root/good-cert.pem /etc/securesock/server-cert.pem'
    machine systemctl reload securesock >/dev/null 2>&1 || fail "systemctl reload with the certificate restored failed"
    echo "   systemctl reload failed (exit non-zero, the error in the journal), the old certificate still served"
fi

echo "== deb test: systemctl stop (SIGTERM, drain, exit 0)"
machine systemctl stop securesock
[ "$(show Result)" = success ] || fail "stop: Result=$(show Result)"
if [ "$(show ExecMainCode)" != 1 ] || [ "$(show ExecMainStatus)" != 0 ]; then
    fail "stop: main process ended with code $(show ExecMainCode) status $(show ExecMainStatus), expected a clean exit 0"
fi
machine journalctl -u securesock -o cat --no-pager | grep -q "drained" || fail "stop: no drain in the journal"
echo "   stopped: drained, exit 0, Result=success"

echo "== deb test: dpkg --purge"
machine dpkg --purge securesock 2>&1 | sed 's/^/   dpkg: /' || fail "dpkg --purge failed"
! machine test -e /etc/securesock || fail "purge left /etc/securesock"
! machine test -e /usr/lib/systemd/system/securesock.service || fail "purge left the unit file"
! machine dpkg-statoverride --list /etc/securesock >/dev/null || fail "purge left the statoverride of /etc/securesock"

# wait_served PORT: waits (15 s at most) until check.sh passes against 127.0.0.1:PORT.
wait_served() {
    local deadline=$((SECONDS + 15))
    until check "$1" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { machine journalctl -u securesock -n 20 --no-pager >&2; fail "nothing served on port $1"; }
        sleep 0.2
    done
}

echo "== deb test: upgrade from a version configured through /etc/default/securesock"
machine dpkg -i "$old_pkg" 2>&1 | sed 's/^/   dpkg (0.0.1): /' || fail "dpkg -i of the previous version failed"
machine sed -i 's/^SECURESOCK_LISTEN=.*/SECURESOCK_LISTEN=0.0.0.0:12399/' /etc/default/securesock
machine systemctl restart securesock
wait_served 12399
echo "   the previous version serves on 12399 from an edited /etc/default/securesock"
machine dpkg -i "$pkg" 2>&1 | sed 's/^/   dpkg (upgrade): /' || fail "the upgrade failed"
machine grep -q '^SECURESOCK_LISTEN=0.0.0.0:12399$' /etc/default/securesock || fail "the upgrade replaced the edited settings"
machine test -e /etc/securesock/securesock.toml || fail "the upgrade did not install securesock.toml"
wait_served 12399
served_from=$(cmdline "$(show MainPID)")
[ "$served_from" = /usr/bin/securesock ] || fail "the upgraded host does not serve from its settings: $served_from"
# journald takes the line from the start script's stream on its own time: wait for it.
wait_journal "securesock-start: serving from the SECURESOCK_* settings in /etc/default/securesock"
! check 12345 >/dev/null 2>&1 || fail "the upgraded host also serves on 12345"
echo "   upgraded: still served on 12399 from /etc/default/securesock (its log says why), nothing on 12345"
# The documented move to the file: the shipped default back, a restart.
machine cp /usr/share/securesock/securesock.default /etc/default/securesock
machine systemctl restart securesock
wait_served 12345
served_from=$(cmdline "$(show MainPID)")
[ "$served_from" = "/usr/bin/securesock --config /etc/securesock/securesock.toml" ] ||
    fail "with the shipped default back it does not serve from the file: $served_from"
echo "   with the shipped default restored: served on 12345 from securesock.toml"
machine dpkg --purge securesock 2>&1 | sed 's/^/   dpkg: /' || fail "dpkg --purge after the upgrade failed"
! machine test -e /etc/securesock || fail "purge after the upgrade left /etc/securesock"

machine systemctl poweroff >/dev/null 2>&1 || true
deadline=$((SECONDS + 30))
while kill -0 "$nspawn_pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
wait "$nspawn_pid" 2>/dev/null || true
nspawn_pid=""
echo "deb test on $suite: OK ($((SECONDS - start)) s)"
