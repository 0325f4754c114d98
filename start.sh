#!/usr/bin/env bash
# Set up the web chat robot (a virtualenv with the pinned requirements) and start it.
# Configuration comes from WEBBOT_* environment variables or a .env file (see README.md).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "start.sh: Python 3.10 or newer is needed; set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
if ! command -v ffmpeg >/dev/null 2>&1; then
  echo "start.sh: ffmpeg is not installed. Text chat works without it, but voice input will not." >&2
  echo "          Install it with: sudo apt-get install ffmpeg   (or: brew install ffmpeg)" >&2
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# Reinstall only when the requirements changed since the last successful install.
stamp=.venv/.requirements.sha256
if [ ! -f "$stamp" ] || ! sha256sum --status -c "$stamp" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  sha256sum requirements.txt > "$stamp"
fi
exec .venv/bin/python app.py "$@"
