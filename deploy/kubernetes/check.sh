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

need_venv "k8s-check-$YAMLLINT_VERSION-$KUBERNETES_VALIDATE_VERSION" \
    'import yaml, yamllint, kubernetes_validate' \
    "yamllint==$YAMLLINT_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" || exit 2

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
