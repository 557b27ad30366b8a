#!/bin/sh
# Checks the Kubernetes manifests without a cluster:
#   1. yamllint over the repository (config: .yamllint);
#   2. kubernetes-validate --strict: each object against the Kubernetes API's JSON schemas (shipped in
#      the package, so offline), for the oldest version the manifests support (1.30, for the preStop
#      sleep action) and the newest the package knows; unknown fields fail;
#   3. check_manifests.py: the security and wiring promises (non-root, read-only, capabilities,
#      seccomp, Secret mount, probes, grace period, selectors), plus mutations that must be caught.
# kustomization.yaml and the cert-manager Certificate have no schema there and get steps 1 and 3.
#
#   deploy/kubernetes/check.sh
#
# The tools are pinned and installed from PyPI into a private virtualenv on first use, outside the
# repo: /var/cache/securesock-venv for root, ${XDG_CACHE_HOME:-~/.cache}/securesock-venv otherwise,
# or $SECURESOCK_VENV_DIR when set.
set -eu
cd "$(dirname "$0")/../.."

YAMLLINT_VERSION=1.38.0
KUBERNETES_VALIDATE_VERSION=1.37.0
K8S_OLDEST=1.30.0
K8S_NEWEST=1.37.0

# shellcheck source=scripts/common.sh
. scripts/common.sh

if [ -n "${SECURESOCK_VENV_DIR:-}" ]; then
    base=$SECURESOCK_VENV_DIR
elif [ "$(id -u)" -eq 0 ]; then
    base=/var/cache/securesock-venv
else
    base=${XDG_CACHE_HOME:-$HOME/.cache}/securesock-venv
fi
venv=$base/k8s-check-$YAMLLINT_VERSION-$KUBERNETES_VALIDATE_VERSION

venv_ok() {
    "$venv/bin/python" -c 'import yaml, yamllint, kubernetes_validate' >/dev/null 2>&1
}

if ! venv_ok; then
    python=${PYTHON:-python3}
    if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        need_packages python3 python3-venv
        python=/usr/bin/python3
    fi
    mkdir -p "$base"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$base/.lock"
        flock 9
    fi
    if ! venv_ok; then
        echo "check.sh: installing yamllint and kubernetes-validate from PyPI into $venv (first use only)" >&2
        rm -rf "$venv"
        if ! "$python" -m venv "$venv" >&2 ||
            ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
                "yamllint==$YAMLLINT_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2 ||
            ! venv_ok; then
            rm -rf "$venv"
            echo "check.sh: could not install the checkers (is PyPI reachable?)" >&2
            exit 2
        fi
    fi
fi

dir=deploy/kubernetes
# The files that hold Kubernetes API objects (not kustomize's file, not cert-manager's CRD).
set --
for f in "$dir"/*.yaml "$dir"/optional/*.yaml; do
    if ! grep -q '^kind: \(Kustomization\|Certificate\)$' "$f"; then
        set -- "$@" "$f"
    fi
done
[ $# -ge 3 ] || { echo "check.sh: expected Deployment, Service and PodDisruptionBudget files in $dir" >&2; exit 1; }

echo "== yamllint"
"$venv/bin/yamllint" --strict .
for version in "$K8S_OLDEST" "$K8S_NEWEST"; do
    echo "== kubernetes-validate --strict (Kubernetes $version)"
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "$@"
done
echo "== manifest properties"
"$venv/bin/python" "$dir/check_manifests.py" "$dir"
