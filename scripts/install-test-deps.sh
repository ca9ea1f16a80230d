#!/usr/bin/env bash
# What the tests need on a fresh machine: the package with its dev extras at the versions the tests ran
# against, and Debian's Chromium + ChromeDriver for the browser test of the golden table (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
python -m pip install -q -c constraints/ci.txt -e ".[dev]"
