"""Speaker: text to speech with Piper, on this machine, one sentence at a time.

Voices are Piper's ONNX models: a name such as `en_US-lessac-medium` (fetched once from
the hub's rhasspy/piper-voices into the Hugging Face cache, with its progress in the
log) or a path to a voice's `.onnx` with its `.onnx.json` beside it. WEBBOT_TTS_VOICE may
list several, comma-separated; the first is the default. Each loads on first use (or at
start-up); a failure is kept and reported (SpeakerUnavailable) while chat goes on.

`speak()` yields 16-bit mono PCM one sentence at a time, each synthesised in its own
turn of a bounded queue (SpeakerBusy when full), so a long text starts sounding after
its first sentence and never holds the engine while a slow client reads. No Flask here.
"""

import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from webbot.config import DEFAULT_TTS_VOICE, SENTENCE_PAUSE_S, TTS_MAX_WAITING, TTS_VOICES_REPO
from webbot.voice.admission import Admission, Busy
from webbot.voice.speakable import sentences, speakable

log = logging.getLogger(__name__)

# OpenAI's voice names: each means the server's default voice (a Piper voice name picks that voice instead).
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
                 "marin", "cedar")
VOICE_NAME = re.compile(r"^(?P<family>[a-z]{2,3})_(?P<region>[A-Za-z]{2,3})-(?P<name>[\w]+)-(?P<quality>x_low|low|"
                        r"medium|high)$")


WORD = re.compile(r"\w")  # a sentence without a letter or digit has nothing to say


class SpeakerBusy(Busy):
    """Too many texts are waiting to be spoken; try again shortly."""


class SpeakerUnavailable(RuntimeError):
    """A voice could not be loaded; the message says why."""


class UnknownVoice(ValueError):
    """A voice this server does not have; the message lists those it has."""


def voice_files(voice: str) -> tuple[Path, Path]:
    """(model, config) for a voice: a path to an .onnx file, or a Piper voice name fetched from the hub."""
    path = Path(voice).expanduser()
    if path.suffix == ".onnx" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"no Piper voice at {path}")
        config = path.with_name(path.name + ".json")
        if not config.is_file():
            raise FileNotFoundError(f"{path.name} needs its {config.name} beside it")
        return path, config
    match = VOICE_NAME.match(voice)
    if not match:
        raise ValueError(f"{voice!r} is neither a path to a Piper .onnx voice nor a Piper voice name such as "
                         f"{DEFAULT_TTS_VOICE}")
    from huggingface_hub import hf_hub_download

    folder = f"{match['family']}/{match['family']}_{match['region']}/{match['name']}/{match['quality']}"
    log.info("fetching Piper voice %s from %s (once; kept in the Hugging Face cache)", voice, TTS_VOICES_REPO)
    config = hf_hub_download(TTS_VOICES_REPO, f"{folder}/{voice}.onnx.json")
    model = hf_hub_download(TTS_VOICES_REPO, f"{folder}/{voice}.onnx")
    return Path(model), Path(config)


def voice_name(voice: str) -> str:
    """How a configured voice is called in requests and on /healthz: its name, or its file's stem."""
    path = Path(voice)
    return path.name.removesuffix(".onnx") if path.suffix == ".onnx" or "/" in voice else voice


class Speaker:
    """The server's voices: `speak(text, voice, speed)` yields each sentence's audio as it is made."""

    def __init__(self, voices: str = DEFAULT_TTS_VOICE, enabled: bool = True, max_waiting: int = TTS_MAX_WAITING):
        configured = [v.strip() for v in voices.split(",") if v.strip()] or [DEFAULT_TTS_VOICE]
        self.sources = {voice_name(v): v for v in configured}  # name -> name or path
        self.default = next(iter(self.sources))
        self.enabled = enabled
        self.admission = Admission(max_waiting, 1, SpeakerBusy, "texts")
        self.errors: dict[str, str] = {}
        self._voices: dict = {}
        self._load_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.default

    @property
    def ready(self) -> bool:
        return self.default in self._voices

    @property
    def error(self) -> str | None:
        return self.errors.get(self.default)

    def voice_for(self, requested: str | None) -> str:
        """The voice a request names: one of this server's, or the default for OpenAI's names and none."""
        if not requested or requested.lower() in OPENAI_VOICES:
            return self.default
        if requested in self.sources:
            return requested
        raise UnknownVoice(f"There is no voice {requested!r} here; use one of {', '.join(self.sources)} or an "
                           f"OpenAI voice name such as alloy (which means {self.default}).")

    def load(self, name: str | None = None):
        """The Piper voice `name` (the default when None), loaded once; SpeakerUnavailable with the reason."""
        name = name or self.default
        with self._load_lock:
            if name in self._voices:
                return self._voices[name]
            if name in self.errors:
                raise SpeakerUnavailable(self.errors[name])
            started = time.monotonic()
            try:
                from piper import PiperVoice

                model, config = voice_files(self.sources[name])
                voice = PiperVoice.load(model, config)
            except Exception as exc:
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                log.exception("Piper voice %s failed to load", name)
                raise SpeakerUnavailable(self.errors[name]) from exc
            log.info("Piper voice %s ready in %.1f s (%d Hz)", name, time.monotonic() - started,
                     voice.config.sample_rate)
            self._voices[name] = voice
            return voice

    def sample_rate(self, name: str | None = None) -> int:
        return self.load(name).config.sample_rate

    def speak(self, markdown: str, name: str | None = None, speed: float = 1.0) -> Iterator[bytes]:
        """16-bit mono PCM at `sample_rate(name)`, one sentence per item, with a short pause between sentences.

        The first sentence's turn is taken when the first item is asked for (SpeakerBusy then, before any
        audio); later sentences wait their turn however long the queue is. Text with nothing to say gives
        no items."""
        from piper import SynthesisConfig

        voice = self.load(name)
        scale = (voice.config.length_scale or 1.0) / speed
        config = SynthesisConfig(length_scale=scale)
        pause = np.zeros(int(voice.config.sample_rate * SENTENCE_PAUSE_S), dtype=np.int16).tobytes()
        said = [s for s in sentences(speakable(markdown)) if WORD.search(s)]
        for index, sentence in enumerate(said):
            with self.admission.turn(admitted=index > 0):
                audio = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(sentence, config))
            if audio:
                yield (pause if index else b"") + audio
