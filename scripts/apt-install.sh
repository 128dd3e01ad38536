#!/usr/bin/env bash
# Installs Debian packages the test suite needs beyond the Python `test` extra (`make test` calls it
# for each one it lacks): `prometheus` (prometheus and promtool: rule tests, a real Prometheus),
# `systemd` (systemd-analyze: tests/test_deploy.py checks the unit), `chromium` (tests/test_landing.py
# loads the page at / headless; scripts/landing_screenshot.py). As root, or through sudo.
#   scripts/apt-install.sh PACKAGE...
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "$@"
