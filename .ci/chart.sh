#!/usr/bin/env bash
# Lints and renders the Helm chart with a real helm, then validates the
# rendered manifests (CRDs included) with kubernetes-validate --strict.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
helm=$(tests/kube/helm.sh | tail -n 1)
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

# (kubectl finding the plugin, and the chart installed on a real API
# server, are tests in tests/cluster.rs.)
