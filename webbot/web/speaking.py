"""The one way from text to a spoken response, for /v1/audio/speech and the page's Read aloud.

It checks OpenAI's request body (`input`, `model`, `voice`, `response_format`, `speed`),
takes the first sentence's turn before answering (so a full queue or a voice that cannot
load is a 503 with a sentence, not a broken stream) and streams the rest chunked as each
sentence is made. Every refusal is a 4xx or 503 with a sentence.
"""

from flask import Response, current_app, stream_with_context

from webbot import config
from webbot.voice.encoding import CONTENT_TYPES, encode
from webbot.voice.speaker import SpeakerBusy, SpeakerUnavailable, UnknownVoice
from webbot.web.errors import ApiError
from webbot.web.inputs import json_body, number, text_field


def speech_response(speaker, default_format: str = config.SPEECH_FORMATS[0]) -> Response:
    """The audio for the request's JSON body, streamed; or an ApiError that says what to change."""
    if not speaker.enabled:
        raise ApiError(404, "Spoken replies are turned off on this server (WEBBOT_TTS=off).", "speech_off")
    body = json_body()
    text = body.get("input")
    if not isinstance(text, str):
        raise ApiError(400, "'input' must be a string with the text to speak.", "invalid_input")
    if not text.strip():
        raise ApiError(400, "The text to speak is empty; send some words in 'input'.", "empty_input")
    text_field(text, "The text to speak")
    most = current_app.config["WEBBOT_TTS_MAX_CHARS"]
    if len(text) > most:
        raise ApiError(413, f"The text is {len(text)} characters; the limit is {most}. Split it and send the "
                            "parts one after another.", "input_too_long")
    for name in ("model", "voice"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise ApiError(400, f"'{name}' must be a string.", f"invalid_{name}")
    response_format = default_format if body.get("response_format") is None else body["response_format"]
    if not isinstance(response_format, str) or response_format not in config.SPEECH_FORMATS:
        raise ApiError(400, f"'response_format' must be one of {', '.join(config.SPEECH_FORMATS)}.",
                       "invalid_response_format")
    speed = number(body, "speed", config.SPEECH_SPEED_RANGE, 1.0)
    try:
        voice = speaker.voice_for(body.get("voice"))
        rate = speaker.sample_rate(voice)
        pcm = speaker.speak(text, voice, float(speed))
        first = next(pcm, None)
    except UnknownVoice as exc:
        raise ApiError(400, str(exc), "invalid_voice") from None
    except SpeakerBusy:
        raise ApiError(503, "The server is busy speaking other texts; try again in a few seconds.", "speech_busy",
                       {"Retry-After": "2"}) from None
    except SpeakerUnavailable as exc:
        raise ApiError(503, f"The voice could not be loaded ({exc}); check WEBBOT_TTS_VOICE and the server log, "
                            "then restart the server. Chat works without it.", "voice_failed") from None
    if first is None:
        raise ApiError(400, "The text holds nothing that can be spoken (no words or numbers); send some words.",
                       "nothing_to_say")
    audio = encode(_resumed(first, pcm), rate, response_format)
    return Response(stream_with_context(audio), mimetype=CONTENT_TYPES[response_format],
                    headers={"X-Accel-Buffering": "no", "Cache-Control": "no-store"})


def _resumed(first: bytes, rest):
    """`first` and then the rest of the sentences; closing it closes `rest` (the speaker stops)."""
    try:
        yield first
        yield from rest
    finally:
        rest.close()
