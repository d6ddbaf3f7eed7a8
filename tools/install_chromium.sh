#!/usr/bin/env bash
# Install Debian's headless-capable `chromium`, which tests/test_listening_page.py uses to
# open the voice-conversion listening page (index.html) and check that every <audio> and
# <img> on it loads. Run as root (CI and `make test` do); as another user it only prints
# the command to run. Nothing is downloaded when chromium is already installed.
#
#   bash tools/install_chromium.sh
set -euo pipefail

have_chromium() {
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}

if have_chromium; then
  echo "chromium is installed: $(command -v chromium || command -v chromium-browser)"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "chromium is missing; install it as root:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium" >&2
  echo "(or run: sudo bash tools/install_chromium.sh)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# A fresh container has no package lists; fetch them only when the package is unknown.
if ! apt-cache show chromium >/dev/null 2>&1; then
  apt-get update -q
fi
apt-get install -y -q --no-install-recommends chromium
have_chromium || { echo "error: apt-get finished but no chromium binary is on PATH" >&2; exit 1; }
echo "chromium installed: $(command -v chromium)"
