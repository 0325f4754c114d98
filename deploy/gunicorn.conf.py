"""gunicorn settings for the web chat robot (run_webbot.sh passes this file with -c).

One worker: each worker process would load its own copy of the model. Threads serve
concurrent page loads and streams; generation itself is queued inside the app. TLS comes
from certs/ (or WEBBOT_CERT/WEBBOT_KEY) when both files are there. Logs go to stdout and
stderr for journald. On SIGTERM the worker ends the replies in flight at once (each is
stored as stopped and its stream closes with the stored text), then exits within
WEBBOT_GRACE_S seconds.
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for `app`

# Only names gunicorn does not read as settings may live here (`config` is one of its settings).
from webbot.config import from_env, served_url, tls_files  # noqa: E402

_config = from_env()

wsgi_app = "app:create_app()"
bind = [f"{_config['WEBBOT_HOST']}:{_config['WEBBOT_PORT']}"]
workers = 1
worker_class = "gthread"
threads = int(os.environ.get("WEBBOT_THREADS", 32))
# gthread's timeout is the worker's heartbeat, not a request limit, so long streams survive it.
timeout = 120
graceful_timeout = int(os.environ.get("WEBBOT_GRACE_S", 20))
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = "info"
control_socket_disable = True  # gunicorn 27's admin socket would need a writable home directory
# X-Forwarded-* headers are the app's to judge (ProxyFix with WEBBOT_PROXY_HOPS), not gunicorn's.
forwarded_allow_ips = ""
_tls = tls_files(_config)
if _tls:
    certfile, keyfile = _tls


def when_ready(server):
    server.log.info("web chat robot serving %s on %s (model %s)", "HTTPS" if _tls else "plain HTTP",
                    served_url(_config), _config["WEBBOT_MODEL"])


def post_worker_init(worker):
    """Load the models in the background, and end replies in flight cleanly on SIGTERM."""
    from app import start_loading

    app = worker.wsgi
    start_loading(app)
    graceful_exit = worker.handle_exit

    def handle_exit(sig, frame):
        ended = app.extensions["webbot"].bot.cancel_all()
        worker.log.info("shutting down: ended %d replies in flight (stored as stopped)", ended)
        graceful_exit(sig, frame)

    signal.signal(signal.SIGTERM, handle_exit)


def worker_exit(server, worker):
    """The worker is leaving: stop the model and write its kept KV caches to disk, within the grace time."""
    app = getattr(worker, "wsgi", None)
    if app is not None and "webbot" in app.extensions:
        app.extensions["webbot"].bot.close(seconds=max(1, graceful_timeout - 5))
