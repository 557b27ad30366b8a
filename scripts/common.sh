# Shared by the scripts in this folder; sourced, never run.
# shellcheck shell=sh

# need_packages PKG...: installs the Debian/Ubuntu packages that are not installed yet, with apt-get
# (through sudo when not root). Does nothing, and needs no network, when all are there.
need_packages() {
    missing=""
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
            missing="$missing $pkg"
        fi
    done
    [ -n "$missing" ] || return 0
    if [ "$(id -u)" -eq 0 ]; then
        sudo=""
    elif command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    else
        echo "missing packages:$missing; install them as root (apt-get install$missing)" >&2
        return 1
    fi
    echo "installing:$missing" >&2
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# need_cargo: fails with instructions when there is no Rust toolchain recent enough.
need_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found: install Rust 1.85 or later with rustup (see https://rustup.rs), then run this again" >&2
        return 1
    fi
}

# need_venv NAME CHECK REQUIREMENT...: makes sure the private Python virtualenv NAME holds the pinned
# PyPI packages, installing them on first use, and sets $venv to its folder. CHECK is Python code
# that exits 0 when the venv is usable (it is run again after installing). Venvs live in
# /var/cache/securesock-venv for root and $XDG_CACHE_HOME/securesock-venv otherwise;
# SECURESOCK_VENV_DIR overrides. Returns 1 when the install fails.
need_venv() {
    name=$1
    check=$2
    shift 2
    if [ -n "${SECURESOCK_VENV_DIR:-}" ]; then
        base=$SECURESOCK_VENV_DIR
    elif [ "$(id -u)" -eq 0 ]; then
        base=/var/cache/securesock-venv
    else
        base=${XDG_CACHE_HOME:-$HOME/.cache}/securesock-venv
    fi
    venv=$base/$name
    # A venv also breaks when the Python it was made from goes away (an upgrade): CHECK sees that.
    "$venv/bin/python" -c "$check" >/dev/null 2>&1 && return 0
    python=${PYTHON:-python3}
    if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        # Debian's python3 keeps venv's pip bootstrap in a separate package.
        need_packages python3 python3-venv || return 1
        python=/usr/bin/python3
    fi
    mkdir -p "$base"
    # Two runs starting at once must not build the same venv together; the lock is held until the
    # calling script exits.
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$base/.lock"
        flock 9
    fi
    "$venv/bin/python" -c "$check" >/dev/null 2>&1 && return 0
    echo "installing $* from PyPI into $venv (first use only)" >&2
    rm -rf "$venv"
    if ! "$python" -m venv "$venv" >&2 ||
        ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$@" >&2 ||
        ! "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
        rm -rf "$venv"
        echo "could not install $* (is PyPI reachable?)" >&2
        return 1
    fi
}
