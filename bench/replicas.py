"""Replicas in front of one model server: aggregate throughput and time to first token, 1 replica against 2.

    .venv/bin/python -m bench.replicas [--clients 16 --requests 96 --tokens 48 --rounds 2]

Starts, on loopback: one model server (our app in local mode, `python app.py`, on the
2-layer random Llama by default, or --model DIR), a real Redis and PostgreSQL (Debian's
packages, as in tests/services.py), and two app replicas in `openai` mode sharing them.
Each round sends the same fixed number of chats from the same number of concurrent
clients through the chat page's route, first all to one replica, then spread over both
(round-robin, as a load balancer would), alternating the order between rounds so
drift on a noisy machine does not favour one side. Prints and writes
bench/results/replicas.json: replies/s, tokens/s, TTFT p50/p95, errors, and the ratios.
"""

import argparse
import itertools
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.common import save_report
from harness import assets
from harness.server_process import PageSession, Server, read_sse
from harness.services import PostgresServer, RedisServer


def chat(page: PageSession, url: str, question: str, tokens: int) -> dict:
    """One chat through a replica's page route: a new conversation, one message, the whole streamed reply."""
    started = time.monotonic()
    cid = page.post(url + "/api/conversations", json={}, timeout=60).json()["id"]
    response = page.post(f"{url}/api/conversations/{cid}/messages", stream=True, timeout=300,
                         json={"content": question, "temperature": 0, "max_tokens": tokens})
    if response.status_code != 200:
        return {"status": response.status_code}
    first, count = None, 0
    for event, data in read_sse(response.iter_lines(decode_unicode=True)):
        if event == "token" and first is None:
            first = time.monotonic() - started
        if event == "done":
            count = data["usage"]["completion_tokens"]
    return {"status": 200, "ttft": first, "tokens": count, "seconds": time.monotonic() - started}


def load(urls: list[str], clients: int, total: int, tokens: int) -> dict:
    """`total` chats from `clients` threads, each thread keeping to one replica (a sticky browser)."""
    jobs = iter(range(total))
    lock = threading.Lock()
    results = []

    def client(url: str):
        page = PageSession()
        while True:
            with lock:
                n = next(jobs, None)
            if n is None:
                return
            result = chat(page, url, f"Question {n}: tell me about the number {n}.", tokens)
            with lock:
                results.append(result)

    spread = itertools.cycle(urls)
    threads = [threading.Thread(target=client, args=(next(spread),)) for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    ok = [r for r in results if r["status"] == 200 and r["ttft"] is not None]
    ttfts = sorted(r["ttft"] for r in ok)
    return {"replicas": len(urls), "chats": len(results), "ok": len(ok), "errors": len(results) - len(ok),
            "wall_s": round(wall, 2), "replies_per_s": round(len(ok) / wall, 3),
            "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
            "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
            "ttft_p95_s": round(ttfts[int(0.95 * (len(ttfts) - 1))], 3) if ttfts else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory for the model server (default: the 2-layer random Llama)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--tokens", type=int, default=48, help="reply tokens per chat")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model = Path(args.model) if args.model else assets.tiny_llama_dir()

    work = Path(tempfile.mkdtemp(prefix="webbot-replicas-"))
    redis, postgres = RedisServer(work / "redis").start(), PostgresServer().start()
    servers = []
    try:
        upstream = Server(model, work / "upstream", work / "upstream.log", WEBBOT_MAX_TOKENS="4096",
                          WEBBOT_RATE_MESSAGES="off", WEBBOT_MAX_WAITING="256").start()
        servers.append(upstream)
        env = {"WEBBOT_BACKEND": "openai", "WEBBOT_BACKEND_URL": upstream.url + "/v1",
               "WEBBOT_BACKEND_MODEL": model.name, "WEBBOT_MAX_TOKENS": "4096", "WEBBOT_RATE_MESSAGES": "off",
               "WEBBOT_REDIS_URL": redis.url, "WEBBOT_DATABASE_URL": postgres.create_database("bench"),
               "WEBBOT_SECRET_KEY": "bench-replicas"}
        replicas = [Server(model, work / f"replica{n}", work / f"replica{n}.log", **env).start() for n in (1, 2)]
        servers += replicas
        load([replicas[0].url], 2, 4, 8)  # warm-up: first requests pay for imports and connections
        runs = []
        for round_number in range(args.rounds):
            order = ([1, 2] if round_number % 2 == 0 else [2, 1])
            for count in order:
                result = load([r.url for r in replicas[:count]], args.clients, args.requests, args.tokens)
                result["round"] = round_number + 1
                runs.append(result)
                print(result, flush=True)
    finally:
        for server in servers:
            server.stop()
        redis.stop()
        postgres.remove()

    def median(count: int, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["replicas"] == count)

    summary = {key: {"1": median(1, key), "2": median(2, key), "ratio_2_over_1": round(median(2, key) /
                                                                                        median(1, key), 3)}
               for key in ("replies_per_s", "tokens_per_s", "ttft_p50_s", "ttft_p95_s")}
    print("median over rounds (2 replicas / 1):", summary, flush=True)
    save_report("replicas", {"model": model.name, "clients": args.clients, "requests": args.requests,
                                    "tokens": args.tokens, "rounds": args.rounds, "runs": runs,
                                    "summary": summary})


if __name__ == "__main__":
    main()
