"""The pages and the endpoints beside them: the chat page (new, or one conversation), the page's microphone and
Read aloud, /healthz, /metrics and the API's OpenAPI description.
"""

from flask import Blueprint, Response, abort, current_app, jsonify, render_template

from webbot import config
from webbot.documents import formats
from webbot.web import health, openapi
from webbot.web.auth import check_metrics_key
from webbot.web.chat_settings import model_label
from webbot.web.owners import current_owner
from webbot.web.services import services
from webbot.web.speaking import speech_response
from webbot.web.transcription import transcribe_upload

bp = Blueprint("pages", __name__)
API_VERSION = "1.0"


@bp.get("/")
def index():
    return chat_page(None)


@bp.get("/c/<conversation_id>")
def conversation_page(conversation_id):
    if services().store.get_conversation(current_owner(), conversation_id) is None:
        abort(404, description="There is no such conversation here; start a new one from the sidebar.")
    return chat_page(conversation_id)


def page_config() -> dict:
    """The limits and names the page's scripts need, from the server (the page keeps no copy of its own)."""
    settings = current_app.config
    return {"maxMessageChars": settings["WEBBOT_MAX_MESSAGE_CHARS"],
            "maxAudioSeconds": int(settings["WEBBOT_MAX_AUDIO_SECONDS"]),
            "generateTitles": settings["WEBBOT_GENERATE_TITLES"],
            "memorySummary": settings["WEBBOT_MEMORY_SUMMARY"],
            "continuable": list(config.CONTINUABLE),
            "speech": services().speaker.enabled,
            "documentTypes": ",".join(f".{ending}" for ending in formats.KINDS),
            "maxDocumentBytes": settings["WEBBOT_MAX_DOCUMENT_BYTES"],
            "maxDocuments": config.MAX_DOCUMENTS_PER_MESSAGE}


def chat_page(conversation_id: str | None):
    """The chat page, with this person's conversations and `conversation_id` open."""
    app_services = services()
    return render_template("chat.html", conversations=app_services.store.list_conversations(current_owner()),
                           current=conversation_id, model=model_label(app_services.bot, current_app.config),
                           model_id=app_services.bot.name, page_config=page_config(),
                           max_message_chars=current_app.config["WEBBOT_MAX_MESSAGE_CHARS"],
                           ranges={"temperature": config.TEMPERATURE_RANGE, "top_p": config.TOP_P_RANGE})


@bp.post("/api/transcriptions")
def transcription():
    """The page's microphone: the same path as /v1/audio/transcriptions, plus whether speech was heard."""
    transcript, _ = transcribe_upload(services().transcriber, current_app.config["WEBBOT_MAX_AUDIO_BYTES"])
    return jsonify(text=transcript.text, speech=transcript.speech, duration=round(transcript.duration, 2))


@bp.post("/api/speech")
def speech():
    """The page's Read aloud: the same path as /v1/audio/speech, WAV unless asked otherwise (every browser plays it
    without a decoder of its own)."""
    return speech_response(services().speaker, default_format="wav")


@bp.get("/metrics")
def metrics():
    """Prometheus metrics, for the server's metrics or API key or an admin's key only (auth.check_metrics_key)."""
    check_metrics_key()
    return Response(services().bot.metrics.exposition(), mimetype="text/plain; version=0.0.4; charset=utf-8")


@bp.get("/v1/openapi.json")
def openapi_description():
    """The /v1 API's OpenAPI description; public, like any API's documentation."""
    return jsonify(openapi.describe(API_VERSION))


@bp.get("/healthz")
def healthz():
    body, status, headers = health.report(services())
    return jsonify(body), status, headers
