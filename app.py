"""The Flask app: configuration, sessions, storage, page routes, health and error handlers.

`create_app(config=None, bot=None, transcriber=None)` builds an app around injected
collaborators; `python app.py` builds the real ones, starts loading the model in the
background (so /healthz answers 503 until it is ready) and serves on
WEBBOT_HOST:WEBBOT_PORT.
"""

import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from flask import Flask, Response, abort, jsonify, render_template, request
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from chat_bot import ChatBot
from speech import Transcriber
from webbot import config as settings
from webbot.model.malloc_tuning import fix_mmap_threshold
from webbot.model.remote_bot import RemoteBot
from webbot.model.upstream import UpstreamError
from webbot.storage import database
from webbot.storage.conversations import Store
from webbot.storage.replies import LocalReplies, RedisReplies
from webbot.storage.users import Users
from webbot.web import accounts as account_pages
from webbot.web import api, conversations, db_cli, health, messages, openapi, user_cli, validation
from webbot.web.auth import check_metrics_key, init_auth
from webbot.web.errors import current_owner, error_response
from webbot.web.rate_limits import init_rate_limits
from webbot.web.security import init_security
from webbot.web.sessions import init_sessions, redis_client
from webbot.web.validation import BadInput, transcribe_upload

log = logging.getLogger("webbot")
API_VERSION = "1.0"
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               429: "rate_limit_error"}  # OpenAI's error types; other 4xx are invalid_request_error


def bot_from_config(config: dict):
    """A ChatBot, or a RemoteBot for WEBBOT_BACKEND=openai (not yet loaded), from the WEBBOT_* settings."""
    if config["WEBBOT_BACKEND"] == "openai":
        return RemoteBot(config["WEBBOT_BACKEND_URL"], config["WEBBOT_MODEL"], config["WEBBOT_BACKEND_KEY"],
                         config["WEBBOT_BACKEND_MODEL"], config["WEBBOT_MAX_TOKENS"], config["WEBBOT_MEMORY_RATIO"],
                         config["WEBBOT_SYSTEM_PROMPT"], config["WEBBOT_BACKEND_TIMEOUT"],
                         cache_salt=config["WEBBOT_BACKEND_CACHE_SALT"])
    return ChatBot(config["WEBBOT_MODEL"], config["WEBBOT_DEVICE"], config["WEBBOT_DTYPE"],
                   config["WEBBOT_MAX_TOKENS"], config["WEBBOT_MEMORY_RATIO"], config["WEBBOT_SYSTEM_PROMPT"],
                   max_waiting=config["WEBBOT_MAX_WAITING"], max_batch=config["WEBBOT_MAX_BATCH"],
                   kv_cache_mb=config["WEBBOT_KV_CACHE_MB"], kv_reuse=config["WEBBOT_KV_REUSE"],
                   max_seconds=config["WEBBOT_MAX_REPLY_SECONDS"],
                   cpu_batch_matmul=config["WEBBOT_CPU_BATCH_MATMUL"])


def transcriber_from_config(config: dict) -> Transcriber:
    """A Transcriber (not yet loaded) from the WEBBOT_* settings."""
    return Transcriber(config["WEBBOT_WHISPER_MODEL"], config["WEBBOT_SPEECH_BACKEND"], config["WEBBOT_DEVICE"],
                       config["WEBBOT_MAX_AUDIO_SECONDS"], config["WEBBOT_SPEECH_MAX_WAITING"],
                       config["WEBBOT_SPEECH_URL"], config["WEBBOT_SPEECH_KEY"], config["WEBBOT_BACKEND_TIMEOUT"])


def create_app(config: dict | None = None, bot=None, transcriber: Transcriber | None = None) -> Flask:
    """Build the app around a bot and a transcriber (loaded or not), its database and, when configured, Redis."""
    app = Flask(__name__)
    app.config.update(settings.from_env())
    app.config.update(config or {})
    data_dir = Path(app.config["WEBBOT_DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    app.secret_key = settings.secret_key(data_dir, app.config["WEBBOT_SECRET_KEY"])
    app.config["MAX_CONTENT_LENGTH"] = app.config["WEBBOT_MAX_REQUEST_BYTES"]
    hops = app.config["WEBBOT_PROXY_HOPS"]
    if hops:  # trust X-Forwarded-For/-Proto/-Host/-Port from exactly this many proxies, no more
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)
    # The cookie is Secure when the app serves TLS itself or sits behind a TLS-terminating proxy.
    secure = bool(hops) or settings.tls_files(app.config) is not None
    app.config["SESSION_COOKIE_SECURE"] = (config or {}).get("SESSION_COOKIE_SECURE", secure)
    redis = redis_client(app.config["WEBBOT_REDIS_URL"]) if app.config["WEBBOT_REDIS_URL"] else None
    init_sessions(app, data_dir, redis)
    engine = database.connect(app.config["WEBBOT_DATABASE_URL"] or f"sqlite:///{data_dir / 'webbot.db'}")
    database.upgrade(engine)
    store = Store(engine)
    active = RedisReplies(redis) if redis is not None else LocalReplies()
    interrupted = store.close_interrupted(live=active.live())
    if interrupted:
        log.info("marked %d replies cut off by the last shutdown as interrupted", interrupted)
    app.extensions["webbot"] = SimpleNamespace(
        bot=bot or bot_from_config(app.config), store=store, users=Users(engine), active=active, redis=redis,
        transcriber=transcriber or transcriber_from_config(app.config))

    app.before_request(lambda: body_limits(app))  # before the CSRF check, which reads the body
    init_auth(app, app.extensions["webbot"].users)
    app.register_blueprint(account_pages.bp)
    app.register_blueprint(conversations.bp)
    app.register_blueprint(messages.bp)
    app.register_blueprint(api.bp)
    app.cli.add_command(user_cli.users_command)
    app.cli.add_command(db_cli.db_command)
    app.add_template_filter(_datetime, "datetime")
    init_security(app, api.bp)
    _register_pages(app)
    _register_errors(app)
    init_rate_limits(app)
    return app


def body_limits(app: Flask) -> None:
    """Raise the body limit for the routes that take files (an import, a recording) before anything reads it."""
    if request.endpoint == "conversations.import_conversations":
        request.max_content_length = conversations.IMPORT_MAX_BYTES
    elif request.endpoint in ("page_transcription", "api.audio_transcriptions"):
        request.max_content_length = app.config["WEBBOT_MAX_AUDIO_BYTES"] + validation.FORM_OVERHEAD_BYTES


def _datetime(timestamp: float) -> str:
    """A stored time as the account and admin pages show it."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def _register_pages(app: Flask) -> None:
    state = app.extensions["webbot"]

    @app.get("/")
    def index():
        return _chat_page(None)

    @app.get("/c/<conversation_id>")
    def conversation_page(conversation_id):
        if state.store.get_conversation(current_owner(), conversation_id) is None:
            abort(404, description="There is no such conversation here; start a new one from the sidebar.")
        return _chat_page(conversation_id)

    def _chat_page(conversation_id):
        owner = current_owner()
        return render_template("chat.html", conversations=state.store.list_conversations(owner),
                               current=conversation_id, model=state.bot.name,
                               max_message_chars=app.config["WEBBOT_MAX_MESSAGE_CHARS"],
                               generate_titles=app.config["WEBBOT_GENERATE_TITLES"],
                               max_audio_seconds=int(app.config["WEBBOT_MAX_AUDIO_SECONDS"]))

    @app.post("/api/transcriptions")
    def page_transcription():
        """The page's microphone: the same path as /v1/audio/transcriptions, plus whether speech was heard."""
        transcript, _ = transcribe_upload(state.transcriber, app.config["WEBBOT_MAX_AUDIO_BYTES"])
        return jsonify(text=transcript.text, speech=transcript.speech, duration=round(transcript.duration, 2))

    @app.get("/metrics")
    def metrics():
        """Prometheus metrics, for the server's WEBBOT_API_KEY or an admin's key only (see auth.check_metrics_key)."""
        check_metrics_key()
        return Response(state.bot.metrics.exposition(), mimetype="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/openapi.json")
    def openapi_description():
        """The /v1 API's OpenAPI description; public, like any API's documentation."""
        return jsonify(openapi.describe(API_VERSION))

    @app.get("/healthz")
    def healthz():
        body, status, headers = health.report(state)
        return jsonify(body), status, headers


def _register_errors(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        messages = {
            404: "Nothing is here; check the address.",
            405: f"{request.method} is not allowed here.",
            413: f"The request is too large; send at most "
                 f"{(request.max_content_length or app.config['WEBBOT_MAX_REQUEST_BYTES']) // 1024} KB.",
        }
        default = messages.get(exc.code, exc.description)
        message = exc.description if exc.description and exc.description != type(exc).description else default
        kind = "not_found_error" if exc.code == 404 else "invalid_request_error"
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return error_response(exc.code, message, kind, headers=headers)

    @app.errorhandler(BadInput)
    def bad_input(exc: BadInput):
        kind = ERROR_TYPES.get(exc.status, "invalid_request_error")
        return error_response(exc.status, exc.message, kind, exc.code, exc.headers)

    @app.errorhandler(UpstreamError)
    def upstream_failed(exc: UpstreamError):
        headers = {"Retry-After": "5"} if exc.status == 503 else {}
        return error_response(exc.status, exc.sentence, "upstream_error", exc.code, headers)

    @app.errorhandler(DBAPIError)
    def database_down(exc: DBAPIError):
        if not exc.connection_invalidated and not isinstance(exc, OperationalError):
            return server_error(exc)  # a bug (a constraint, a bad query), not an outage
        log.warning("database unreachable on %s %s: %s", request.method, request.path, exc.orig)
        return error_response(503, "The database cannot be reached right now, so nothing was changed; try again "
                                   "in a few seconds.", "server_error", "database_unavailable", {"Retry-After": "5"})

    @app.errorhandler(RedisError)
    def redis_down(exc: Exception):
        log.warning("Redis unreachable on %s %s: %s", request.method, request.path, exc)
        return error_response(503, "Redis (sessions, and which replica writes which reply) cannot be reached right "
                                   "now; try again in a few seconds.", "server_error", "session_store_unavailable",
                              {"Retry-After": "5"})

    @app.errorhandler(Exception)
    def server_error(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "Something went wrong on the server; the error is in its log.", "server_error")


def start_loading(app: Flask) -> threading.Thread:
    """Make this process a server: pin malloc's mmap threshold, then load the app's models in the
    background; /healthz is 503 until the chat model is ready.

    The speech model loads after it when WEBBOT_SPEECH_LOAD is `startup`, else on the first clip.
    """
    state = app.extensions["webbot"]
    fix_mmap_threshold()

    def load():
        try:
            state.bot.load()
        except Exception:
            pass  # ChatBot.load logged it; /healthz reports bot.error
        if app.config["WEBBOT_SPEECH_LOAD"] == "startup":
            try:
                state.transcriber.load()
            except Exception:
                pass  # logged; /healthz and the microphone report it

    thread = threading.Thread(target=load, name="model-load", daemon=True)
    thread.start()
    return thread


def main() -> None:
    """Serve the app with Flask's threaded server (HTTPS when certs/ holds a certificate and key)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = settings.from_env()
    tls = settings.tls_files(config)
    log.info("web chat robot serving %s on %s (model %s loading in the background)",
             "HTTPS" if tls else "plain HTTP (no certificate in certs/)", settings.served_url(config),
             config["WEBBOT_MODEL"])
    app = create_app()
    start_loading(app)
    app.run(host=app.config["WEBBOT_HOST"], port=app.config["WEBBOT_PORT"], threaded=True, use_reloader=False,
            ssl_context=tls)


if __name__ == "__main__":
    main()
