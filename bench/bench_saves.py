"""The cost of saving a streaming reply before the page is sent it (issue 22, item 4): one save's time for replies
of growing length, on SQLite (the default, WAL) and PostgreSQL, and what that costs a busy server at today's
rate (at most 10 saves a second per reply, PARTIAL_SAVE_S = 0.1) against the old one (every 2 s).

    .venv/bin/python -m bench.bench_saves          # about a minute; PostgreSQL when Debian's package is installed

Prints a table and writes bench/results/saves.json.
"""

import statistics
import tempfile
import time
from pathlib import Path

from bench.common import save_report
from harness.services import PostgresServer, postgres_bin
from webbot import config
from webbot.storage import database
from webbot.storage.conversations import Store

LENGTHS = (1_000, 4_000, 16_000)  # characters: a short answer, a long one, a very long one
SAVES = 300
STREAMS = 32  # replies written at once on a GPU (MAX_BATCH["cuda"])


def time_saves(url: str) -> dict:
    engine = database.connect(url)
    database.upgrade(engine)
    store = Store(engine)
    cid = store.create_conversation("bench")["id"]
    reply = store.add_message(cid, "assistant", "", "streaming")
    figures = {}
    for length in LENGTHS:
        text = ("lorem ipsum dolor sit amet " * (length // 27 + 1))[:length]
        times = []
        for n in range(SAVES):
            started = time.perf_counter()
            store.finish_message(reply["id"], text[:length - (n % 7)], "streaming")
            times.append(time.perf_counter() - started)
        times.sort()
        figures[length] = {"median_ms": round(statistics.median(times) * 1000, 3),
                           "p99_ms": round(times[int(len(times) * 0.99)] * 1000, 3)}
    engine.dispose()
    return figures


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = time_saves(f"sqlite:///{Path(tmp) / 'bench.db'}")
    if postgres_bin() is not None:
        server = PostgresServer().start()
        try:
            results["postgresql"] = time_saves(server.create_database("bench_saves"))
        finally:
            server.remove()
    rate_now, rate_before = 1 / config.PARTIAL_SAVE_S, 1 / 2.0
    print(f"{'database':<11} {'reply chars':>11} {'median ms':>10} {'p99 ms':>8} "
          f"{'busy share, ' + str(STREAMS) + ' replies, now':>32} {'before':>8}")
    for kind, figures in results.items():
        for length, figure in figures.items():
            now = STREAMS * rate_now * figure["median_ms"] / 1000
            before = STREAMS * rate_before * figure["median_ms"] / 1000
            figure.update(share_now=round(now, 4), share_before=round(before, 4))
            print(f"{kind:<11} {length:>11} {figure['median_ms']:>10.3f} {figure['p99_ms']:>8.3f} "
                  f"{now:>31.1%} {before:>8.1%}")
    save_report("saves", {"saves_each": SAVES, "streams": STREAMS, "saves_per_s_now": rate_now,
                          "saves_per_s_before": rate_before, "results": results,
                          "share": "of one core's time (SQLite) or one connection's (PostgreSQL), all replies "
                                   "saving at the given rate"})


if __name__ == "__main__":
    main()
