#!/usr/bin/env bash
# Run the web chat robot under gunicorn (what the systemd unit in deploy/ starts).
# Uses the project's virtualenv (make it with ./start.sh once) and deploy/gunicorn.conf.py:
# one worker, threads for concurrent streams, HTTPS when certs/ holds cert.pem and key.pem.
# Settings come from the environment or .env (WEBBOT_HOST, WEBBOT_PORT, WEBBOT_MODEL, ...).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/gunicorn ]; then
  echo "run_webbot.sh: no .venv with gunicorn here; run ./start.sh once to set it up" >&2
  exit 1
fi
# shellcheck disable=SC1091
source .venv/bin/activate
exec gunicorn -c deploy/gunicorn.conf.py "$@"
