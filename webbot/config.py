"""Configuration: every WEBBOT_* setting with its default, and every limit the layers share, stated once.

The settings come from the environment; a `.env` file in the working directory may set
them too (read without overriding what the environment already says). The constants
below are the defaults of those settings and the fixed limits that more than one place
reads: request checks, chat settings, the OpenAPI description and the page all take
them from here. This module imports nothing of the product (it is the leaf every layer
may read).
"""

import os
import secrets
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]  # the project root, where the entry points are
CERTS = PROJECT / "certs"  # where certs/make_cert.sh writes cert.pem and key.pem

# The model and its context
DEFAULT_MODEL = "unsloth/Llama-3.2-1B-Instruct"
DEFAULT_SYSTEM_PROMPT = "You are a helpful, concise assistant. Answer in Markdown when it helps."
DEFAULT_MAX_TOKENS = 8192  # the context cap (WEBBOT_MAX_TOKENS); a model with a shorter context lowers it
DEFAULT_REPLY_SHARE = 0.25  # of the context, kept for the reply (WEBBOT_MEMORY_RATIO); the rest is prompt
DEFAULT_RECALL_SHARE = 0.15  # of the prompt budget, for messages recalled from outside memory (WEBBOT_RECALL_SHARE)
RECALL_MOST = 3  # messages recalled for one reply at most
PIN_SHARE = 0.10  # of the prompt budget, for pinned messages
NOTE_SHARE = 0.10  # of the prompt budget, for the model's notes of messages outside memory (WEBBOT_MEMORY_SUMMARY)
NOTE_TOKENS = 120  # the most tokens the model writes for one note
MAX_NOTE_CHARS = 2000  # a note as stored, written by the model or edited by a person
MODEL_BACKENDS = ("local", "openai")  # the model in this process, or an OpenAI-compatible server
QUANTS = ("auto", "none", "int8")  # WEBBOT_QUANT: auto is int8 on CPU, none (bf16) on CUDA

# Sampling: the page's default, the API's (OpenAI's), and the ranges every request is checked against
PAGE_TEMPERATURE = 0.7
API_TEMPERATURE = 1.0
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.01, 1.0)
REPLY_TOKENS_RANGE = (1, 1_000_000)  # what a request may ask for; the context cuts it down further
MAX_STOP_STRINGS = 4
MAX_SYSTEM_PROMPT_CHARS = 8000

# Serving
MAX_WAITING = 16  # replies that may wait for a slot (WEBBOT_MAX_WAITING); beyond that 503
MAX_BATCH = {"cpu": 8, "cuda": 32}  # replies decoded together when WEBBOT_MAX_BATCH is auto
PREFILL_CHUNK = {"cpu": 256, "cuda": 2048}  # prompt tokens per step, so running replies keep moving
MAX_REPLY_SECONDS = 600.0  # the longest one reply may generate (WEBBOT_MAX_REPLY_SECONDS)
FAILED_EXIT_GRACE_S = 3.0  # after the GPU fails, how long the pages get to read why before the process exits
KV_CACHE_MB_CPU = 2048  # kept KV caches when WEBBOT_KV_CACHE_MB is auto, on CPU
KV_CACHE_GPU_SHARE = 0.25  # ... and on CUDA, this share of the GPU's memory
KV_DISK_SHARE, KV_DISK_MB_MOST = 0.10, 8192  # WEBBOT_KV_DISK_MB=auto: this share of the free disk, at most this
REMOTE_MAX_STREAMS = 64  # replies one replica streams from a model server at once; more get 503
STREAM_HEARTBEAT_S = 10  # an SSE comment while a request waits, so proxies keep it open
PARTIAL_SAVE_S = 0.1  # a streaming reply is saved at most this often, and the page is sent only what is saved
RECONNECT_GRACE_S = 10.0  # how long a reply nobody looks for goes on (WEBBOT_RECONNECT_GRACE_S)

# Conversations
MAX_MESSAGE_CHARS = 32_000
MAX_CONVERSATIONS = 1000
MAX_TITLE_CHARS = 200  # a title set by hand
TITLE_FROM_MESSAGE_CHARS = 60  # the provisional title cut from the first message
UNDO_S = 60.0  # how long a deleted conversation can be restored
SEARCH_CHARS = 200  # the longest search
CONTINUABLE = ("length", "stopped", "interrupted")  # reply statuses that Continue may go on from
REPLY_STATUSES = ("complete", "length", "stopped", "interrupted", "error")  # as stored, once a reply has ended

# Requests
MAX_REQUEST_KB = 2048  # a JSON body (WEBBOT_MAX_REQUEST_KB)
MAX_REQUEST_CHARS = 200_000  # all the text of one /v1 request (WEBBOT_MAX_REQUEST_CHARS)
IMPORT_MAX_BYTES = 64 * 1024 * 1024  # an export of many long conversations is larger than any message
FORM_OVERHEAD_BYTES = 65_536  # an upload's form fields and multipart framing beside the file

# Speech
DEFAULT_WHISPER_MODEL = "openai/whisper-base"
SPEECH_BACKENDS = ("transformers", "faster-whisper")
SPEECH_LOADS = ("startup", "lazy")
MAX_AUDIO_MB = 25
MAX_AUDIO_SECONDS = 300.0
SPEECH_MAX_WAITING = 4
# CTranslate2 (faster-whisper) threads on a CPU that also runs the language model. Its default (4) keeps an
# OpenMP pool alive after the first clip, and from then on every decode step waits on slow thread wake-ups: on
# 2 cores the model's tokens/s halved for good. One thread transcribed as fast there (bench/bench_threads.py).
SPEECH_CPU_THREADS_BESIDE_MODEL = 1

# Spoken replies (text to speech with Piper)
DEFAULT_TTS_VOICE = "en_US-lessac-medium"  # a Piper voice name (fetched from TTS_VOICES_REPO on first use) or a path
TTS_VOICES_REPO = "rhasspy/piper-voices"
MAX_SPEECH_CHARS = 4096  # the longest text one request may have spoken (WEBBOT_TTS_MAX_CHARS); OpenAI's limit
TTS_MAX_WAITING = 4  # texts that may wait while another is spoken (WEBBOT_TTS_MAX_WAITING); beyond that 503
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")  # OpenAI's response_format values; mp3 the default
SPEECH_SPEED_RANGE = (0.25, 4.0)
PCM_RATE = 24_000  # OpenAI's pcm: 24 kHz, 16-bit signed little-endian, mono, no header
SENTENCE_PAUSE_S = 0.25  # silence between spoken sentences

# Documents in the conversation (webbot/documents)
MAX_DOCUMENT_MB = 20  # one attached file (WEBBOT_MAX_DOCUMENT_MB)
MAX_DOCUMENT_PAGES = 1000  # pages of one PDF (WEBBOT_MAX_DOCUMENT_PAGES)
DOCUMENT_QUOTA_MB = 200  # every file one person keeps, together (WEBBOT_DOCUMENT_QUOTA_MB)
DOCUMENT_SHARE = 0.4  # of the prompt budget: a document this size or smaller goes in whole; larger ones send passages
MAX_DOCUMENTS_PER_MESSAGE = 10
PASSAGE_CHARS = 1200  # the longest passage a large document is cut into (about 300 tokens of English)
EXTRACT_SECONDS = 60  # CPU time one extraction may take (in a child process)
EXTRACT_MEMORY_MB = 1536  # address space of that child process
UNZIPPED_MB = 200  # what a DOCX may unpack to (a zip bomb is refused before it is read)

# Who may use it
AUTH_MODES = ("open", "password", "accounts")
SIGNUPS = ("closed", "open")
MAX_SESSIONS = 10_000  # signed-in browsers whose sessions are stored (WEBBOT_MAX_SESSIONS)


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=value lines of a .env file (comments and blank lines ignored)."""
    values = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip().strip("'\"")
    return values


def from_env(environ: dict | None = None) -> dict:
    """Flask config keys for every WEBBOT_* setting."""
    env = {**read_dotenv(Path(".env")), **(os.environ if environ is None else environ)}
    data_dir = Path(env.get("WEBBOT_DATA_DIR", "instance")).resolve()
    redis_url = env.get("WEBBOT_REDIS_URL") or None
    backend = _choice(env, "WEBBOT_BACKEND", MODEL_BACKENDS)
    if backend == "openai" and not env.get("WEBBOT_BACKEND_URL"):
        raise ValueError("WEBBOT_BACKEND=openai needs WEBBOT_BACKEND_URL, the model server's OpenAI-compatible "
                         "base URL (for example http://vllm:8000/v1)")
    return {
        "WEBBOT_MODEL": env.get("WEBBOT_MODEL", DEFAULT_MODEL),
        "WEBBOT_MODEL_NAME": env.get("WEBBOT_MODEL_NAME", "").strip() or None,  # None: made from the model's id
        "WEBBOT_BACKEND": backend,
        "WEBBOT_BACKEND_URL": env.get("WEBBOT_BACKEND_URL") or None,
        "WEBBOT_BACKEND_KEY": env.get("WEBBOT_BACKEND_KEY") or None,
        "WEBBOT_BACKEND_MODEL": env.get("WEBBOT_BACKEND_MODEL") or None,
        "WEBBOT_BACKEND_TIMEOUT": float(env.get("WEBBOT_BACKEND_TIMEOUT", 120)),
        # vLLM's cache_salt on each request, so the model server keeps each person's prefix cache apart
        "WEBBOT_BACKEND_CACHE_SALT": _choice(env, "WEBBOT_BACKEND_CACHE_SALT", ("off", "on")) == "on",
        "WEBBOT_SPEECH_URL": env.get("WEBBOT_SPEECH_URL") or None,
        "WEBBOT_SPEECH_KEY": env.get("WEBBOT_SPEECH_KEY") or None,
        "WEBBOT_DATABASE_URL": env.get("WEBBOT_DATABASE_URL") or None,  # None: webbot.db in the data dir
        "WEBBOT_REDIS_URL": redis_url,
        "WEBBOT_SECRET_KEY": env.get("WEBBOT_SECRET_KEY") or None,
        "WEBBOT_DEVICE": env.get("WEBBOT_DEVICE", "auto"),
        "WEBBOT_DTYPE": env.get("WEBBOT_DTYPE", "auto"),
        # int8 weights for decoding on CPU (webbot/model/quant.py)
        "WEBBOT_QUANT": _choice(env, "WEBBOT_QUANT", QUANTS),
        "WEBBOT_MAX_TOKENS": int(env.get("WEBBOT_MAX_TOKENS", DEFAULT_MAX_TOKENS)),
        "WEBBOT_MEMORY_RATIO": float(env.get("WEBBOT_MEMORY_RATIO", DEFAULT_REPLY_SHARE)),  # the reply's share
        "WEBBOT_SYSTEM_PROMPT": env.get("WEBBOT_SYSTEM_PROMPT", DEFAULT_SYSTEM_PROMPT),
        # recall of messages outside memory: the default for every conversation (each can turn it off) and its room
        "WEBBOT_RECALL": _choice(env, "WEBBOT_RECALL", ("on", "off")) == "on",
        "WEBBOT_RECALL_SHARE": float(env.get("WEBBOT_RECALL_SHARE", DEFAULT_RECALL_SHARE)),
        # the model writes notes of turns once they fall out of memory; they ride with the pinned messages
        "WEBBOT_MEMORY_SUMMARY": _choice(env, "WEBBOT_MEMORY_SUMMARY", ("off", "on")) == "on",
        "WEBBOT_TEMPERATURE": float(env.get("WEBBOT_TEMPERATURE", PAGE_TEMPERATURE)),
        "WEBBOT_HOST": env.get("WEBBOT_HOST", "127.0.0.1"),
        "WEBBOT_PORT": int(env.get("WEBBOT_PORT", 5000)),
        "WEBBOT_DATA_DIR": str(data_dir),
        "WEBBOT_CERT": env.get("WEBBOT_CERT", str(CERTS / "cert.pem")),
        "WEBBOT_KEY": env.get("WEBBOT_KEY", str(CERTS / "key.pem")),
        "WEBBOT_PROXY_HOPS": int(env.get("WEBBOT_PROXY_HOPS", 0)),
        "WEBBOT_API_KEY": env.get("WEBBOT_API_KEY") or None,
        "WEBBOT_METRICS_KEY": env.get("WEBBOT_METRICS_KEY") or None,  # opens /metrics and nothing else
        "WEBBOT_WHISPER_MODEL": env.get("WEBBOT_WHISPER_MODEL", DEFAULT_WHISPER_MODEL),
        "WEBBOT_SPEECH_BACKEND": _choice(env, "WEBBOT_SPEECH_BACKEND", SPEECH_BACKENDS),
        "WEBBOT_SPEECH_LOAD": _choice(env, "WEBBOT_SPEECH_LOAD", SPEECH_LOADS),
        "WEBBOT_MAX_AUDIO_BYTES": int(float(env.get("WEBBOT_MAX_AUDIO_MB", MAX_AUDIO_MB)) * 1_000_000),
        "WEBBOT_MAX_AUDIO_SECONDS": float(env.get("WEBBOT_MAX_AUDIO_SECONDS", MAX_AUDIO_SECONDS)),
        "WEBBOT_SPEECH_MAX_WAITING": int(env.get("WEBBOT_SPEECH_MAX_WAITING", SPEECH_MAX_WAITING)),
        # spoken replies: Piper voices (comma-separated; the first is the default), their limits, on or off
        "WEBBOT_TTS": _choice(env, "WEBBOT_TTS", ("on", "off")) == "on",
        "WEBBOT_TTS_VOICE": env.get("WEBBOT_TTS_VOICE") or DEFAULT_TTS_VOICE,
        "WEBBOT_TTS_MAX_CHARS": int(env.get("WEBBOT_TTS_MAX_CHARS", MAX_SPEECH_CHARS)),
        "WEBBOT_TTS_MAX_WAITING": int(env.get("WEBBOT_TTS_MAX_WAITING", TTS_MAX_WAITING)),
        "WEBBOT_MAX_DOCUMENT_BYTES": int(float(env.get("WEBBOT_MAX_DOCUMENT_MB", MAX_DOCUMENT_MB)) * 1_000_000),
        "WEBBOT_MAX_DOCUMENT_PAGES": int(env.get("WEBBOT_MAX_DOCUMENT_PAGES", MAX_DOCUMENT_PAGES)),
        "WEBBOT_DOCUMENT_QUOTA_BYTES": int(float(env.get("WEBBOT_DOCUMENT_QUOTA_MB", DOCUMENT_QUOTA_MB)) * 1_000_000),
        "WEBBOT_MAX_BATCH": _auto_int(env, "WEBBOT_MAX_BATCH"),
        "WEBBOT_MAX_WAITING": int(env.get("WEBBOT_MAX_WAITING", MAX_WAITING)),
        "WEBBOT_MAX_REPLY_SECONDS": float(env.get("WEBBOT_MAX_REPLY_SECONDS", MAX_REPLY_SECONDS)),
        "WEBBOT_KV_CACHE_MB": _auto_int(env, "WEBBOT_KV_CACHE_MB"),
        "WEBBOT_KV_REUSE": _choice(env, "WEBBOT_KV_REUSE", ("on", "off")) == "on",
        "WEBBOT_CUDA_GRAPHS": _choice(env, "WEBBOT_CUDA_GRAPHS", ("off", "on")) == "on",
        # the disk tier of kept KV caches (files under the data dir); 0 turns it off
        "WEBBOT_KV_DISK_MB": _auto_int(env, "WEBBOT_KV_DISK_MB"),
        "WEBBOT_MAX_CONVERSATIONS": int(env.get("WEBBOT_MAX_CONVERSATIONS", MAX_CONVERSATIONS)),
        # a page that lost its connection mid-reply keeps it going while it polls; unwatched this long, it stops
        "WEBBOT_RECONNECT_GRACE_S": float(env.get("WEBBOT_RECONNECT_GRACE_S", RECONNECT_GRACE_S)),
        "WEBBOT_GENERATE_TITLES": _choice(env, "WEBBOT_GENERATE_TITLES", ("on", "off")) == "on",
        "WEBBOT_MAX_MESSAGE_CHARS": int(env.get("WEBBOT_MAX_MESSAGE_CHARS", MAX_MESSAGE_CHARS)),
        "WEBBOT_MAX_REQUEST_BYTES": int(float(env.get("WEBBOT_MAX_REQUEST_KB", MAX_REQUEST_KB)) * 1024),
        # all the text of one /v1 request, every message together (the model reads at most WEBBOT_MAX_TOKENS of it)
        "WEBBOT_MAX_REQUEST_CHARS": int(env.get("WEBBOT_MAX_REQUEST_CHARS", MAX_REQUEST_CHARS)),
        # signed-in browsers whose sessions are kept on the server; past it the least recently used are signed out
        "WEBBOT_MAX_SESSIONS": int(env.get("WEBBOT_MAX_SESSIONS", MAX_SESSIONS)),
        "WEBBOT_AUTH": _choice(env, "WEBBOT_AUTH", AUTH_MODES),
        "WEBBOT_PASSWORD": env.get("WEBBOT_PASSWORD", ""),
        "WEBBOT_SIGNUP": _choice(env, "WEBBOT_SIGNUP", SIGNUPS),
        "WEBBOT_RATE_SIGNIN": env.get("WEBBOT_RATE_SIGNIN", "10/minute"),
        "WEBBOT_RATE_MESSAGES": env.get("WEBBOT_RATE_MESSAGES", "30/minute"),
        "WEBBOT_RATE_TRANSCRIPTIONS": env.get("WEBBOT_RATE_TRANSCRIPTIONS", "20/minute"),
        # texts spoken (the page asks for one sentence at a time while it reads a reply aloud)
        "WEBBOT_RATE_SPEECH": env.get("WEBBOT_RATE_SPEECH", "120/minute"),
        "WEBBOT_RATE_DOCUMENTS": env.get("WEBBOT_RATE_DOCUMENTS", "30/minute"),  # files attached or uploaded
        "WEBBOT_RATE_LIMIT_STORAGE": env.get("WEBBOT_RATE_LIMIT_STORAGE") or redis_url or "memory://",
        "WEBBOT_CPU_BATCH_MATMUL": _choice(env, "WEBBOT_CPU_BATCH_MATMUL", ("on", "off")) == "on",
    }


def _auto_int(env: dict, name: str) -> int | None:
    """A whole number, or None for `auto` (the default: chosen for the device when the model loads)."""
    value = env.get(name, "auto")
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number or auto, not {value!r}") from None


def _choice(env: dict, name: str, choices: tuple[str, ...]) -> str:
    """A setting that must be one of `choices` (the first is the default)."""
    value = env.get(name, choices[0])
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def secret_key(data_dir: Path, given: str | None = None) -> bytes:
    """The session-signing key: WEBBOT_SECRET_KEY (replicas must share one), else generated once and kept
    in the data dir, readable by the owner only."""
    if given:
        return given.encode()
    path = data_dir / "secret_key"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass  # made earlier, or just now by another worker
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def tls_files(config: dict) -> tuple[str, str] | None:
    """(certificate, key) when both files exist, else None (serve plain HTTP).

    One without the other is a mistake worth stopping for, not a reason to fall back to HTTP.
    """
    cert, key = Path(config["WEBBOT_CERT"]), Path(config["WEBBOT_KEY"])
    if cert.is_file() and key.is_file():
        return str(cert), str(key)
    if cert.is_file() or key.is_file():
        have, missing = (cert, key) if cert.is_file() else (key, cert)
        raise ValueError(f"found {have} but not {missing}; put both in certs/ (or set WEBBOT_CERT and "
                         "WEBBOT_KEY), or remove the one to serve plain HTTP")
    return None


def served_url(config: dict) -> str:
    """The address to open: https when a certificate and key are in place."""
    scheme = "https" if tls_files(config) else "http"
    host = config["WEBBOT_HOST"]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"{scheme}://{shown}:{config['WEBBOT_PORT']}"
