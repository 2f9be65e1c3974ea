#!/usr/bin/env bash
# The console suite: the real binary in a real headless Chromium (Debian's
# package, driven by playwright-core from npm; no browser download).
# Usage: .ci/ui.sh PATH_TO_BINARY [SCREENSHOT_DIR]
# With SCREENSHOT_DIR the suite also writes the screenshots of docs/console.md.
# (The console in a cluster, with Kubernetes tokens, runs from
# tests/cluster.rs: tests/ui/cluster.mjs.)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release/credit-operator}")
.ci/browser.sh
node tests/ui/console.mjs "$bin" ${2:+"$2"}
