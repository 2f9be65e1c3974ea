#!/usr/bin/env bash
# The console suite: the real binary in a real headless Chromium (Debian's
# package, driven by playwright-core from npm; no browser download).
# Usage: .ci/ui.sh PATH_TO_BINARY [SCREENSHOT_DIR]
# With SCREENSHOT_DIR the suite also writes the screenshots of docs/console.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release/credit-operator}")
if ! command -v chromium > /dev/null; then
    if [ "$(id -u)" = 0 ]; then apt=apt-get; else apt="sudo apt-get"; fi
    $apt update -qq
    DEBIAN_FRONTEND=noninteractive $apt install -y -qq chromium > /dev/null
fi
(cd tests/ui && npm ci --no-audit --no-fund --silent)
node tests/ui/console.mjs "$bin" ${2:+"$2"}
