#!/usr/bin/env bash
# Runs schemathesis against the standalone binary with docs/openapi.json:
# no 5xx, every answer with a documented status, content type and schema.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/credit-operator}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cp -r examples "$work/manifests"
port=18555
"$bin" standalone --manifests "$work/manifests" --ledger "sqlite://$work/credits.db" \
    --listen "127.0.0.1:$port" > "$work/out.log" 2> "$work/err.log" &
pid=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/healthz" > /dev/null && break
    sleep 0.1
done
schemathesis run docs/openapi.json --url "http://127.0.0.1:$port" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing --max-examples "${SCHEMATHESIS_EXAMPLES:-60}" \
    --workers 1 --suppress-health-check all \
    --exclude-path '/v1/namespaces/{ns}/accounts/{account}/events'
# One worker: with two threads the generator's ast.parse can fail inside
# CPython 3.11 ("AST constructor recursion depth mismatch"), an error of
# the tool, not of the API.
# (`…/events` is a stream that never ends by design: tests/standalone.rs
# and the console suite follow it.)
