"""A bounded load generator for the chat server: many browser-like clients on loopback mixing page loads,
chat messages and voice transcriptions, for a fixed number of requests or a fixed time, whichever ends first.

    python -m harness.load --url http://127.0.0.1:5000 --clients 50 --requests 1000 --duration 300 \
        --audio clip.wav --out load.json

Each client loads the page (for its session and CSRF token), makes a conversation, then loops picking a
page load, a chat message (streamed to the end, or dropped after the first token now and then, as a closed
tab does) or a transcription. Every message carries a unique text, so the caller can check afterwards that
each accepted message is stored exactly once and each refused one not at all. A 429 or 503 is answered the
way a polite client would: wait for Retry-After (at most 2 s), then go on. Only loopback addresses are
accepted, so this cannot be pointed at someone else's server.
"""

import argparse
import ipaddress
import json
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import requests

CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')
MIX = {"page": 0.35, "chat": 0.45, "transcribe": 0.2}
DROP_SHARE = 0.1  # this share of chats is abandoned after the first token, as a closed tab does


def loopback_only(url: str) -> None:
    """Refuse any address that is not this machine."""
    host = urlsplit(url).hostname or ""
    address = ipaddress.ip_address(socket.gethostbyname(host))
    if not address.is_loopback:
        raise SystemExit(f"refusing to load {host} ({address}): only loopback addresses are allowed")


class Budget:
    """A fixed number of requests shared by all clients, and a deadline."""

    def __init__(self, requests_total: int, seconds: float):
        self.left, self.deadline = requests_total, time.monotonic() + seconds
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0 or time.monotonic() >= self.deadline:
                return False
            self.left -= 1
            return True


class Client:
    """One browser: a session, a CSRF token, a conversation."""

    def __init__(self, number: int, url: str, audio: bytes | None, results: dict, lock: threading.Lock,
                 mix: dict[str, float]):
        self.number, self.url, self.audio, self.mix = number, url, audio, mix
        self.results, self.lock = results, lock
        self.http = requests.Session()
        self.conversation = None
        self.sent = 0

    def record(self, kind: str, status: int | str, seconds: float, headers=None) -> None:
        with self.lock:
            self.results["statuses"][f"{kind} {status}"] += 1
            self.results["latency"].setdefault(kind, []).append(round(seconds, 4))
            if isinstance(status, int) and status >= 500 and not (status == 503 and headers
                                                                   and "Retry-After" in headers):
                self.results["server_errors"].append(f"{kind} {status}")

    def backoff(self, response) -> None:
        if response.status_code in (429, 503):
            time.sleep(min(float(response.headers.get("Retry-After", 1)), 2.0))

    def page(self) -> None:
        started = time.monotonic()
        path = f"/c/{self.conversation}" if self.conversation and random.random() < 0.5 else "/"
        response = self.http.get(self.url + path, timeout=60)
        self.record("page", response.status_code, time.monotonic() - started, response.headers)
        token = CSRF_META.search(response.text)
        if token:
            self.http.headers["X-CSRFToken"] = token.group(1)

    def start(self) -> None:
        self.page()
        started = time.monotonic()
        response = self.http.post(self.url + "/api/conversations", json={}, timeout=60)
        self.record("new", response.status_code, time.monotonic() - started, response.headers)
        if response.status_code == 201:
            self.conversation = response.json()["id"]

    def chat(self) -> None:
        if not self.conversation:
            return self.start()
        self.sent += 1
        text = f"load client {self.number} message {self.sent} {uuid.uuid4().hex[:8]}: say something"
        drop = random.random() < DROP_SHARE
        started = time.monotonic()
        response = self.http.post(f"{self.url}/api/conversations/{self.conversation}/messages",
                                  json={"content": text, "max_tokens": 16}, stream=True, timeout=120)
        outcome = response.status_code
        if response.status_code == 200:
            event, first_token = None, None
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line[7:]
                    if event == "start":
                        with self.lock:
                            self.results["accepted"].append({"conversation": self.conversation, "text": text})
                    elif event == "token" and first_token is None:
                        first_token = time.monotonic() - started
                        if drop:
                            outcome = "dropped"
                            break
                    elif event in ("done", "error"):
                        outcome = event
            if first_token is not None:
                with self.lock:
                    self.results["ttft"].append(round(first_token, 4))
        else:
            with self.lock:
                self.results["refused"].append({"conversation": self.conversation, "text": text,
                                                "status": response.status_code})
        response.close()
        self.record("chat", outcome, time.monotonic() - started, response.headers)
        self.backoff(response)

    def transcribe(self) -> None:
        if self.audio is None:
            return self.page()
        started = time.monotonic()
        response = self.http.post(self.url + "/api/transcriptions", timeout=120,
                                  files={"file": ("question.wav", self.audio, "audio/wav")})
        self.record("transcribe", response.status_code, time.monotonic() - started, response.headers)
        self.backoff(response)

    def run(self, budget: Budget) -> None:
        actions = {"page": self.page, "chat": self.chat, "transcribe": self.transcribe}
        kinds, weights = list(self.mix), list(self.mix.values())
        try:
            if budget.take():
                self.start()
            while budget.take():
                actions[random.choices(kinds, weights)[0]]()
        except requests.RequestException as exc:  # a refused connection or a timeout is a failure to report
            with self.lock:
                self.results["transport_errors"].append(f"client {self.number}: {type(exc).__name__}: {exc}")


def run_load(url: str, clients: int, requests_total: int, duration: float, audio: bytes | None = None,
             seed: int = 1, mix: dict[str, float] | None = None) -> dict:
    """Run the clients until the requests or the time are used up; returns what happened."""
    loopback_only(url)
    random.seed(seed)
    results = {"statuses": Counter(), "latency": {}, "ttft": [], "accepted": [], "refused": [], "server_errors": [],
               "transport_errors": []}
    lock, budget = threading.Lock(), Budget(requests_total, duration)
    clients_ = [Client(n, url, audio, results, lock, mix or MIX) for n in range(clients)]
    threads = [threading.Thread(target=client.run, args=(budget,), daemon=True) for client in clients_]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(1.0, budget.deadline - time.monotonic()) + 180)  # a stream may outlast the budget
    elapsed = time.monotonic() - started
    results["hung_clients"] = sum(thread.is_alive() for thread in threads)
    results.update(clients=clients, requests=requests_total - max(budget.left, 0), seconds=round(elapsed, 1),
                   statuses=dict(sorted(results["statuses"].items())))
    return results


def parse_mix(text: str) -> dict[str, float]:
    """`page=0.35,chat=0.45,transcribe=0.2` as a dict (actions left out are not done)."""
    mix = {name: float(share) for name, share in (part.split("=") for part in text.split(","))}
    unknown = set(mix) - set(MIX)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown actions {sorted(unknown)}; use {', '.join(MIX)}")
    return mix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the server, on a loopback address")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000, help="requests in all, shared by the clients")
    parser.add_argument("--duration", type=float, default=300, help="seconds at most")
    parser.add_argument("--audio", type=Path, help="a clip to send for transcriptions (none: no transcriptions)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mix", type=parse_mix, default=MIX, help="shares of each action, e.g. page=1,chat=1")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    args = parser.parse_args()
    audio = args.audio.read_bytes() if args.audio else None
    results = run_load(args.url, args.clients, args.requests, args.duration, audio, args.seed, args.mix)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: results[k] for k in ("clients", "requests", "seconds", "statuses", "hung_clients")}))


if __name__ == "__main__":
    main()
