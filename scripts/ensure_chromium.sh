#!/usr/bin/env bash
# Make sure Debian's Chromium and chromedriver are installed (used by the browser tests).
# Idempotent: exits 0 when both are present, installs them with apt-get when running as root,
# and otherwise prints why they are missing and exits 0 (the browser tests then skip).
set -euo pipefail

CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver

if [[ -x "$CHROMIUM" && -x "$CHROMEDRIVER" ]]; then
    echo "chromium and chromedriver already installed"
    exit 0
fi

if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver with apt-get"
    if ! (apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver); then
        echo "apt-get could not install chromium; browser tests will be skipped"
    fi
    if [[ -x "$CHROMIUM" && -x "$CHROMEDRIVER" ]]; then
        echo "chromium and chromedriver installed"
    else
        echo "apt-get finished but $CHROMIUM or $CHROMEDRIVER is still missing;" \
            "browser tests will be skipped"
    fi
    exit 0
fi

echo "chromium/chromedriver not found at $CHROMIUM and $CHROMEDRIVER, and cannot install them" \
    "(needs root and apt-get); browser tests will be skipped." \
    "Install with: sudo apt-get install chromium chromium-driver"
exit 0
