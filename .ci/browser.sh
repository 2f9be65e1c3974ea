#!/usr/bin/env bash
# What the browser tests need: Debian's Chromium and playwright-core from
# npm (tests/ui/package-lock.json); no browser download.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium > /dev/null; then
    if [ "$(id -u)" = 0 ]; then apt=apt-get; else apt="sudo apt-get"; fi
    $apt update -qq
    DEBIAN_FRONTEND=noninteractive $apt install -y -qq chromium > /dev/null
fi
(cd tests/ui && npm ci --no-audit --no-fund --silent)
