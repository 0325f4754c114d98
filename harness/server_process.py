"""`python app.py` as a real server process on a free loopback port (used by tests and benchmarks)."""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"


METRICS_KEY = "test-metrics-key"  # every server started here opens /metrics to this key (WEBBOT_METRICS_KEY)
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_KEY}"}
WRITES = ("POST", "PUT", "PATCH", "DELETE")
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


class PageSession(requests.Session):
    """A client that behaves like the chat page: before its first write to the page's routes it
    loads the page and sends the page's CSRF token with every write after that."""

    def request(self, method, url, *args, **kwargs):
        if method.upper() in WRITES and "/v1/" not in url and "X-CSRFToken" not in self.headers:
            origin = re.match(r"https?://[^/]+", url).group(0)
            page = super().request("GET", origin + "/", timeout=30, verify=kwargs.get("verify", self.verify))
            self.headers["X-CSRFToken"] = CSRF_META.search(page.text).group(1)
        return super().request(method, url, *args, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python app.py` as a real process on a free loopback port."""

    def __init__(self, model: Path, data_dir: Path, log_path: Path, command: list[str] | None = None,
                 cafile: Path | None = None, **env):
        self.port = free_port()
        self.command = command or [sys.executable, "app.py"]
        self.verify = str(cafile) if cafile else True  # an HTTPS server: trust only this certificate
        self.url = f"{'https' if cafile else 'http'}://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {**os.environ, "WEBBOT_MODEL": str(model), "WEBBOT_PORT": str(self.port),
                    "WEBBOT_HOST": "127.0.0.1", "WEBBOT_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1",
                    "WEBBOT_SPEECH_LOAD": "lazy", "WEBBOT_CERT": "", "WEBBOT_KEY": "",
                    "WEBBOT_METRICS_KEY": METRICS_KEY, **env}
        self.process = None

    def start(self, timeout: float = 180, ready: tuple[int, ...] = (200,)) -> "Server":
        """Start and wait until /healthz answers with one of the `ready` statuses."""
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                if requests.get(self.url + "/healthz", timeout=2, verify=self.verify).status_code in ready:
                    return self
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or busy loading
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


def read_sse(lines) -> list[tuple[str, object]]:
    """(event, data) pairs from an iterator of SSE lines; JSON data is decoded."""
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
