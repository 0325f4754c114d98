"""A deployed server under load, then the books checked: what tests/test_load.py runs small and
bench/reliability.py runs large for docs/reliability.md.

Starts the server as run_webbot.sh does (gunicorn with deploy/gunicorn.conf.py, one worker) on the 2-layer
random Llama (real tokenizer and template) with real Whisper tiny.en through faster-whisper, all on
loopback. Then, in rounds, runs the load generator (harness/load.py) in its own process. After each
round it reads the worker's resident memory; at the end it looks up every message in the database: each
accepted one must be stored exactly once (with a finished reply after it), each refused one not at all, and
nothing else may be there.
"""

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import requests
from sqlalchemy import create_engine, select

from harness import assets
from harness.server_process import GUNICORN, METRICS_AUTH, ROOT, Server
from webbot.storage.conversations import messages

QUESTION = "What is the capital of France?"


def start_server(work: Path, **env) -> Server:
    """gunicorn with the deployment's config on the tiny model and real Whisper tiny.en."""
    server = Server(assets.tiny_llama_dir(), work / "data", work / "server.log",
                    command=[str(GUNICORN), "-c", "deploy/gunicorn.conf.py"],
                    WEBBOT_WHISPER_MODEL=str(assets.whisper_tiny_en_ct2_dir()),
                    WEBBOT_SPEECH_BACKEND="faster-whisper", WEBBOT_SPEECH_LOAD="startup", **env)
    return server.start(timeout=240)


def worker_rss(server: Server) -> int:
    """Resident bytes of gunicorn's worker (the process that holds the model)."""
    workers = psutil.Process(server.process.pid).children()
    return sum(worker.memory_info().rss for worker in workers)


def spoken_question(work: Path) -> Path:
    """A WAV of the question spoken by espeak-ng."""
    path = work / "question.wav"
    path.write_bytes(subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "--stdout", QUESTION],
                                    check=True, capture_output=True).stdout)
    return path


def load_round(server: Server, out: Path, clients: int, requests_total: int, duration: float, audio: Path,
               seed: int, mix: str | None = None) -> dict:
    """The load generator (harness/load.py) in its own process; returns its results."""
    subprocess.run([sys.executable, "-m", "harness.load", "--url", server.url, "--clients", str(clients),
                    "--requests", str(requests_total), "--duration", str(duration), "--audio", str(audio),
                    "--seed", str(seed), "--out", str(out), *(["--mix", mix] if mix else [])],
                   cwd=ROOT, check=True, timeout=duration + 400)
    return json.loads(out.read_text())


def check_books(database: Path, rounds: list[dict]) -> dict:
    """Every accepted message stored exactly once with a finished reply, every refused one not at all."""
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as db:
        rows = db.execute(select(messages.c.conversation_id, messages.c.role, messages.c.content,
                                 messages.c.status).order_by(messages.c.id)).all()
    engine.dispose()
    users = Counter((r.conversation_id, r.content) for r in rows if r.role == "user")
    accepted = [(m["conversation"], m["text"]) for r in rounds for m in r["accepted"]]
    refused = [(m["conversation"], m["text"]) for r in rounds for m in r["refused"]]
    replies = Counter(r.status for r in rows if r.role == "assistant")
    return {
        "accepted": len(accepted),
        "stored_once": sum(users[key] == 1 for key in accepted),
        "lost": sum(users[key] == 0 for key in accepted),
        "duplicated": sum(users[key] > 1 for key in accepted),
        "refused": len(refused),
        "refused_but_stored": sum(users[key] > 0 for key in refused),
        "unexpected_rows": sum(users.values()) - len(accepted),
        "replies_by_status": dict(replies),
    }


def run(clients: int, requests_total: int, rounds: int, duration: float, work: Path, mix: str | None = None,
        **env) -> dict:
    """Start the server (with extra environment `env`), load it in rounds, check the books; returns the report."""
    server = start_server(work, **env)
    try:
        audio = spoken_question(work)
        memory = {"after_start": worker_rss(server)}
        results = []
        for number in range(1, rounds + 1):
            results.append(load_round(server, work / f"round{number}.json", clients, requests_total, duration,
                                      audio, seed=number, mix=mix))
            time.sleep(2)  # let the last streams end
            memory[f"after_round_{number}"] = worker_rss(server)
        metrics = requests.get(server.url + "/metrics", headers=METRICS_AUTH, timeout=30).text
    finally:
        server.stop()
    books = check_books(work / "data" / "webbot.db", results)
    statuses = Counter()
    for result in results:
        statuses.update(result["statuses"])
    first, last = memory["after_round_1"], memory[f"after_round_{rounds}"]
    return {
        "clients": clients, "requests_per_round": requests_total, "rounds": rounds, "mix": mix or "default",
        "server_env": env,
        "requests_sent": sum(r["requests"] for r in results), "seconds": [r["seconds"] for r in results],
        "statuses": dict(sorted(statuses.items())),
        "server_errors": [e for r in results for e in r["server_errors"]],
        "transport_errors": [e for r in results for e in r["transport_errors"]],
        "hung_clients": sum(r["hung_clients"] for r in results),
        "books": books,
        "memory_bytes": memory,
        "memory_growth_after_round_1": round((last - first) / first, 4),
        "kv_cache_bytes_line": next((line for line in metrics.splitlines() if line.startswith("webbot_kv_cache_bytes")),
                                    None),
    }
