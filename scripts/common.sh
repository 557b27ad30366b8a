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
