"""The composition root: `create_app(config=None, bot=None, transcriber=None, speaker=None)` builds the Flask app
around its collaborators; `python app.py` builds the real ones and serves.

Everything the app uses is made here and injected (`webbot.web.services.Services`): the
model (a ChatBot in this process, or a RemoteBot in front of a model server), Whisper,
Piper, the database, users, reply claims and, when configured, Redis. `python app.py` starts
loading the model in the background (so /healthz answers 503 until it is ready) and
serves on WEBBOT_HOST:WEBBOT_PORT; gunicorn (`run_webbot.sh`) calls `create_app()` itself.
The layers and one request's path through them are in docs/architecture.md.
"""

import logging
import os
import signal
import threading
import time
from pathlib import Path

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from chat_bot import ChatBot
from speech import Transcriber
from webbot import config as settings
from webbot.model.malloc_tuning import fix_mmap_threshold
from webbot.model.remote_bot import RemoteBot
from webbot.storage import database
from webbot.storage.conversations import Store
from webbot.storage.documents import DocumentStore
from webbot.storage.replies import LocalReplies, RedisReplies
from webbot.storage.users import Users
from webbot.voice.speaker import Speaker
from webbot.web import accounts, api, attachments, conversations, memory_notes, messages, pages
from webbot.web.auth import init_auth
from webbot.web.cli import db_command, users_command
from webbot.web.errors import register_error_handlers
from webbot.web.rate_limits import init_rate_limits
from webbot.web.security import init_security
from webbot.web.services import Services, install, services
from webbot.web.sessions import init_sessions, redis_client

log = logging.getLogger("webbot")


def bot_from_config(config: dict):
    """A ChatBot, or a RemoteBot for WEBBOT_BACKEND=openai (not yet loaded), from the WEBBOT_* settings."""
    if config["WEBBOT_BACKEND"] == "openai":
        return RemoteBot(config["WEBBOT_BACKEND_URL"], config["WEBBOT_MODEL"], config["WEBBOT_BACKEND_KEY"],
                         config["WEBBOT_BACKEND_MODEL"], config["WEBBOT_MAX_TOKENS"], config["WEBBOT_MEMORY_RATIO"],
                         config["WEBBOT_SYSTEM_PROMPT"], config["WEBBOT_BACKEND_TIMEOUT"],
                         cache_salt=config["WEBBOT_BACKEND_CACHE_SALT"], recall_share=config["WEBBOT_RECALL_SHARE"])
    return ChatBot(config["WEBBOT_MODEL"], config["WEBBOT_DEVICE"], config["WEBBOT_DTYPE"],
                   config["WEBBOT_MAX_TOKENS"], config["WEBBOT_MEMORY_RATIO"], config["WEBBOT_SYSTEM_PROMPT"],
                   max_waiting=config["WEBBOT_MAX_WAITING"], max_batch=config["WEBBOT_MAX_BATCH"],
                   kv_cache_mb=config["WEBBOT_KV_CACHE_MB"], kv_reuse=config["WEBBOT_KV_REUSE"],
                   max_seconds=config["WEBBOT_MAX_REPLY_SECONDS"],
                   cpu_batch_matmul=config["WEBBOT_CPU_BATCH_MATMUL"],
                   kv_disk_dir=Path(config["WEBBOT_DATA_DIR"]) / "kv-cache", kv_disk_mb=config["WEBBOT_KV_DISK_MB"],
                   recall_share=config["WEBBOT_RECALL_SHARE"], quant=config["WEBBOT_QUANT"],
                   cuda_graphs=config["WEBBOT_CUDA_GRAPHS"])


def transcriber_from_config(config: dict) -> Transcriber:
    """A Transcriber (not yet loaded) from the WEBBOT_* settings. Beside a language model in this process,
    faster-whisper keeps to SPEECH_CPU_THREADS_BESIDE_MODEL threads on CPU (it is used only there)."""
    beside_model = config["WEBBOT_BACKEND"] == "local"
    return Transcriber(config["WEBBOT_WHISPER_MODEL"], config["WEBBOT_SPEECH_BACKEND"], config["WEBBOT_DEVICE"],
                       config["WEBBOT_MAX_AUDIO_SECONDS"], config["WEBBOT_SPEECH_MAX_WAITING"],
                       config["WEBBOT_SPEECH_URL"], config["WEBBOT_SPEECH_KEY"], config["WEBBOT_BACKEND_TIMEOUT"],
                       settings.SPEECH_CPU_THREADS_BESIDE_MODEL if beside_model else 0)


def speaker_from_config(config: dict) -> Speaker:
    """A Speaker (its voices not yet loaded) from the WEBBOT_TTS* settings."""
    return Speaker(config["WEBBOT_TTS_VOICE"], config["WEBBOT_TTS"], config["WEBBOT_TTS_MAX_WAITING"])


def create_app(config: dict | None = None, bot=None, transcriber: Transcriber | None = None,
               speaker: Speaker | None = None) -> Flask:
    """Build the app around a bot, a transcriber and a speaker (loaded or not), its database and, when configured,
    Redis."""
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
    # The cookies are Secure when the app serves TLS itself or sits behind a TLS-terminating proxy.
    secure = bool(hops) or settings.tls_files(app.config) is not None
    app.config["SESSION_COOKIE_SECURE"] = (config or {}).get("SESSION_COOKIE_SECURE", secure)
    redis = redis_client(app.config["WEBBOT_REDIS_URL"]) if app.config["WEBBOT_REDIS_URL"] else None
    init_sessions(app, data_dir, redis)
    engine = database.connect(app.config["WEBBOT_DATABASE_URL"] or f"sqlite:///{data_dir / 'webbot.db'}")
    database.upgrade(engine)
    store = Store(engine)
    replies = RedisReplies(redis) if redis is not None else LocalReplies()
    interrupted = store.close_interrupted(live=replies.live())
    if interrupted:
        log.info("marked %d replies cut off by the last shutdown as interrupted", interrupted)
    app_services = install(app, Services(bot=bot or bot_from_config(app.config), store=store, users=Users(engine),
                                         documents=DocumentStore(engine), replies=replies, redis=redis,
                                         transcriber=transcriber or transcriber_from_config(app.config),
                                         speaker=speaker or speaker_from_config(app.config)))

    app.before_request(lambda: raise_body_limit(app))  # before the CSRF check, which reads the body
    init_auth(app, app_services.users)
    for blueprint in (pages.bp, accounts.bp, conversations.bp, messages.bp, memory_notes.bp, attachments.bp, api.bp):
        app.register_blueprint(blueprint)
    app.cli.add_command(users_command)
    app.cli.add_command(db_command)
    app.add_template_filter(_datetime, "datetime")
    init_security(app, api.bp)
    register_error_handlers(app)
    init_rate_limits(app)
    return app


def raise_body_limit(app: Flask) -> None:
    """Raise the body limit for the routes that take files (an import, a recording, a document) before anything
    reads it."""
    if request.endpoint == "conversations.import_conversations":
        request.max_content_length = settings.IMPORT_MAX_BYTES
    elif request.endpoint in ("pages.transcription", "api.audio_transcriptions"):
        request.max_content_length = app.config["WEBBOT_MAX_AUDIO_BYTES"] + settings.FORM_OVERHEAD_BYTES
    elif request.endpoint in ("documents.attach", "api.upload_file"):
        request.max_content_length = app.config["WEBBOT_MAX_DOCUMENT_BYTES"] + settings.FORM_OVERHEAD_BYTES
    elif request.endpoint == "api.chat_completions":  # files may come inline, base64 (4 characters per 3 bytes)
        request.max_content_length = (app.config["WEBBOT_MAX_REQUEST_BYTES"]
                                      + app.config["WEBBOT_MAX_DOCUMENT_BYTES"] * 4 // 3 * 2)


def _datetime(timestamp: float) -> str:
    """A stored time as the account and admin pages show it."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def start_loading(app: Flask) -> threading.Thread:
    """Make this process a server: pin malloc's mmap threshold, then load the app's models in the
    background; /healthz is 503 until the chat model is ready. Should the model's GPU fail for good later,
    the process exits with status 1 (`exit_after_failure`), so gunicorn or systemd starts a fresh one.

    The speech model and the default voice load after it when WEBBOT_SPEECH_LOAD is `startup`, else on first use.
    """
    app_services = services(app)
    fix_mmap_threshold()
    if hasattr(app_services.bot, "on_failure"):
        app_services.bot.on_failure = lambda sentence: exit_after_failure(app)

    def load():
        try:
            app_services.bot.load()
        except Exception:
            pass  # the bot logged it; /healthz reports bot.error
        if app.config["WEBBOT_SPEECH_LOAD"] == "startup":
            try:
                app_services.transcriber.load()
            except Exception:
                pass  # logged; /healthz and the microphone report it
            if app.config["WEBBOT_TTS"]:
                try:
                    app_services.speaker.load()
                except Exception:
                    pass  # logged; /healthz and Read aloud report it

    thread = threading.Thread(target=load, name="model-load", daemon=True)
    thread.start()
    return thread


def main() -> None:
    """Serve the app with Flask's threaded server (HTTPS when certs/ holds a certificate and key)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    chosen = settings.from_env()
    tls = settings.tls_files(chosen)
    log.info("web chat robot serving %s on %s (model %s loading in the background)",
             "HTTPS" if tls else "plain HTTP (no certificate in certs/)", settings.served_url(chosen),
             chosen["WEBBOT_MODEL"])
    app = create_app()
    start_loading(app)
    signal.signal(signal.SIGTERM, lambda sig, frame: stop_serving(app))
    app.run(host=app.config["WEBBOT_HOST"], port=app.config["WEBBOT_PORT"], threaded=True, use_reloader=False,
            ssl_context=tls)


def exit_after_failure(app: Flask, grace_s: float = settings.FAILED_EXIT_GRACE_S) -> threading.Thread:
    """The model's GPU failed for good: every reply has ended with the reason and /healthz is 503 with it. After
    `grace_s` (for the pages to read why), exit with status 1: gunicorn starts a new worker, systemd
    (Restart=on-failure) a new process, with a fresh GPU context. Nothing is written from the GPU on the way out."""

    def leave():
        time.sleep(grace_s)
        log.critical("exiting so that a fresh process can load the model again")
        logging.shutdown()
        os._exit(1)

    thread = threading.Thread(target=leave, name="exit-after-gpu-failure", daemon=True)
    thread.start()
    return thread


def stop_serving(app: Flask, grace_s: float = 10.0) -> None:
    """On SIGTERM: end the replies in flight (each is stored as stopped), let their streams store them, stop the
    model and write its kept KV caches to disk, then exit."""
    bot = services(app).bot
    ended = bot.cancel_all()
    log.info("shutting down: ended %d replies in flight (stored as stopped)", ended)
    deadline = time.monotonic() + 2
    while bot.gauges()["active_streams"] and time.monotonic() < deadline:
        time.sleep(0.05)
    bot.close(seconds=grace_s)
    logging.shutdown()
    os._exit(0)  # everything is stored; skipping the interpreter's teardown of torch saves about 2 s


if __name__ == "__main__":
    main()
