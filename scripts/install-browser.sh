#!/usr/bin/env bash
# Installs Debian's `chromium` for tests/test_landing.py, which loads the page at / in a real headless
# browser, and for scripts/landing-screenshot.sh.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium
