#!/usr/bin/env bash
# Drives a running standalone binary over real HTTP with wrk (Debian's):
# durable POST …/usage with unique idempotency keys over 128 connections
# for 20 s, then POST …/authorize over 64. Prints one JSON line per
# endpoint: {"endpoint", "rps", "p50_ms", "p99_ms", "non_2xx"}.
#
#   scripts/load.sh target/release/credit-operator
#
# LOAD_SECONDS (20), LOAD_MEMBERS (1000) and LOAD_THREADS (2) change the
# run; LOAD_METRICS=1 also prints the server's own commit and request
# histograms after the usage run. The server and wrk share this machine's
# cores.
set -euo pipefail
bin=$(realpath "${1:?usage: scripts/load.sh PATH_TO_BINARY}")
seconds=${LOAD_SECONDS:-20}
members=${LOAD_MEMBERS:-1000}
threads=${LOAD_THREADS:-2}

if ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi

dir=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

# One account, one group, $members members with room for the whole run.
mkdir -p "$dir/manifests"
cat > "$dir/manifests/account.yaml" <<YAML
apiVersion: credits.alchemi.io/v1alpha1
kind: CreditAccount
metadata: {name: load, namespace: bench}
spec: {creditsPerCycle: 1000000000000, cadence: CalendarMonth, timezone: UTC, creditFactor: 100, defaultGroup: default}
---
apiVersion: credits.alchemi.io/v1alpha1
kind: CreditGroup
metadata: {name: default, namespace: bench}
spec: {monthlyCredits: 1000000000000}
YAML
for ((i = 0; i < members; i++)); do
  printf -- '---\napiVersion: credits.alchemi.io/v1alpha1\nkind: MemberAllocation\nmetadata: {name: m%d, namespace: bench}\nspec: {user: {id: u-%d, email: m%d@load.example, name: M %d}, monthlyCredits: 1000000000}\n' "$i" "$i" "$i" "$i"
done > "$dir/manifests/members.yaml"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
"$bin" standalone --manifests "$dir/manifests" --ledger "sqlite://$dir/credits.db" \
  --listen "127.0.0.1:$port" >"$dir/server.log" 2>&1 &
server=$!
for _ in $(seq 1 200); do
  if curl -fsS "$base/v1/namespaces/bench/accounts/load/overview" 2>/dev/null | grep -q '"cycle"'; then break; fi
  sleep 0.1
done
curl -fsS "$base/v1/namespaces/bench/accounts/load/overview" >/dev/null || { cat "$dir/server.log"; exit 1; }

# Each request a new idempotency key: the thread's number and a counter.
# ENDPOINT is filled in per run (done() runs outside the threads).
cat > "$dir/load.lua.in" <<LUA
local members = $members
local kind = "ENDPOINT"
local threads = 0
local counter, id = 0, 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  path = args[1]
  id = tonumber(wrk.thread:get("id")) or 0
end
function request()
  counter = counter + 1
  local member = "u-" .. ((counter * 7 + id * 131) % members)
  local body
  if kind == "usage" then
    body = string.format('{"member":"%s","credits":"0.5","idempotencyKey":"t%d-%d"}', member, id, counter)
  else
    body = string.format('{"member":"%s","credits":"1"}', member)
  end
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  local non_2xx = e.status + e.connect + e.read + e.write + e.timeout
  io.write(string.format('{"endpoint":"%s","rps":%d,"p50_ms":%.3f,"p99_ms":%.3f,"non_2xx":%d,"requests":%d}\n',
    kind, math.floor(summary.requests / (summary.duration / 1e6)),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, non_2xx, summary.requests))
end
LUA

A=/v1/namespaces/bench/accounts/load
run() { # endpoint connections
  sed "s/ENDPOINT/$1/" "$dir/load.lua.in" > "$dir/$1.lua"
  wrk -t"$threads" -c"$2" -d"${seconds}s" --timeout 10s -s "$dir/$1.lua" "$base" -- "$A/$1" | tail -n 1
}
usage=$(run usage 128)
echo "$usage"
if [ -n "${LOAD_METRICS:-}" ]; then curl -fsS "$base/metrics" | grep -E "^credits_(ledger_commit_seconds|http_request_seconds.*usage)" >&2; fi
run authorize 64
# Every acknowledged usage is in the ledger once: 0.5 credits each. (wrk
# counts a request cut off by the end of the run as sent; such a usage may
# still have been recorded, so the check allows the open connections.)
curl -fsS "$base$A/overview" | USAGE="$usage" python3 -c '
import json, os, sys
from decimal import Decimal
run = json.loads(os.environ["USAGE"])
used = Decimal(json.load(sys.stdin)["used"])
acked = run["requests"] - run["non_2xx"]
print(json.dumps({"acknowledged_usage": acked, "recorded_usage": str(used / Decimal("0.5"))}))
if not acked <= used / Decimal("0.5") <= acked + 128:
    sys.exit("recorded usage does not match what was acknowledged")
'
