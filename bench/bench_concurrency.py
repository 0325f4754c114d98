"""Aggregate decode speed with 1, 2, 4 and 8 concurrent streams, and the server's memory with 8 conversations cached.

Real server processes on the same model, driven through the streaming
/v1/chat/completions by n clients at once (greedy, distinct prompts). The aggregate rate is
counted over the window in which all n streams are decoding (from the last stream's first
token to the first stream's last token), so prefills and stragglers do not blur it; the
inter-token latency is the gap between consecutive chunks a client receives.

Side by side, interleaved at each n: the default server and, on a CPU, one with fp32 weights
(WEBBOT_QUANT=none) and one with fp32 weights and WEBBOT_CPU_BATCH_MATMUL=off (see
cpu_linear.py), so each default is justified by a ratio from the same run. Then 8
conversations of several turns each are held in the default server's cache and its resident
memory (now and peak) is read from /proc.

    .venv/bin/python -m bench.bench_concurrency              # Llama-3.2-1B shape, random weights
    .venv/bin/python -m bench.bench_concurrency --model ~/.cache/webbot-test-models/smollm2

Prints a table and writes JSON to bench/results/concurrency-MODEL-DEVICE.json.
"""

import argparse
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.bench_turns import question
from bench.common import MODEL_HELP, memory_of, save_report, setup, timed_stream
from harness.server_process import METRICS_AUTH, Server


def prompt(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Client {i}: write a long story about a lighthouse keeper number {i}."}]


def concurrent(url: str, n: int, tokens: int) -> dict:
    """n streams at once: aggregate chunks/s while all decode, inter-token gaps, time to first token."""
    with ThreadPoolExecutor(n) as pool:
        runs = list(pool.map(lambda i: timed_stream(url, prompt(i), tokens), range(n)))
    start = max(run["times"][0] for run in runs)
    end = min(run["times"][-1] for run in runs)
    in_window = sum(1 for run in runs for t in run["times"] if start < t <= end)
    gaps = sorted(b - a for run in runs for a, b in zip(run["times"], run["times"][1:], strict=False))
    return {"streams": n, "aggregate_tok_s": in_window / (end - start) if end > start else None,
            "window_s": end - start, "itl_p50_s": statistics.median(gaps),
            "itl_p99_s": gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))],
            "ttft_max_s": max(run["ttft_s"] for run in runs), "tokens": sum(run["tokens"] for run in runs)}


def kv_cache_bytes(url: str) -> float:
    scraped = requests.get(url + "/metrics", headers=METRICS_AUTH, timeout=30).text
    for family in text_string_to_metric_families(scraped):
        for sample in family.samples:
            if sample.name == "webbot_kv_cache_bytes":
                return sample.value
    raise RuntimeError("no webbot_kv_cache_bytes in /metrics")


def cache_conversations(url: str, conversations: int, turns: int, tokens: int) -> None:
    """Hold `conversations` conversations of `turns` turns each, all going on at once."""
    def converse(i):
        history = []
        for turn in range(1, turns + 1):
            history.append({"role": "user", "content": f"Conversation {i}. " + question(turn)})
            history.append({"role": "assistant", "content": timed_stream(url, history, tokens)["text"]})
    with ThreadPoolExecutor(conversations) as pool:
        list(pool.map(converse, range(conversations)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--tokens", type=int, default=40, help="tokens each stream generates")
    parser.add_argument("--turns", type=int, default=4, help="turns of each cached conversation")
    args = parser.parse_args()

    model_dir, where = setup(args.model)
    variants = {"default": {}}
    if where["device"] == "cpu":  # the default is int8 there; the weight-major product is fp32's (cpu_linear.py)
        variants["fp32"] = {"WEBBOT_QUANT": "none"}
        variants["batch_matmul_off"] = {"WEBBOT_QUANT": "none", "WEBBOT_CPU_BATCH_MATMUL": "off"}
    results = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {name: Server(model_dir, Path(tmp) / name, Path(tmp) / f"{name}.log", WEBBOT_MAX_TOKENS="8192",
                                **env).start(timeout=1800) for name, env in variants.items()}
        try:
            for server in servers.values():
                timed_stream(server.url, prompt(99), 4)  # warm-up
            for n in [int(s) for s in args.streams.split(",")]:
                for name, server in servers.items():
                    results[name].append(concurrent(server.url, n, args.tokens))
                    r = results[name][-1]
                    print(f"{name:<18} {n} streams: {r['aggregate_tok_s']:6.2f} tok/s, inter-token p50 "
                          f"{r['itl_p50_s']:.3f} s p99 {r['itl_p99_s']:.3f} s", flush=True)
            default = servers["default"]
            for name in list(servers):
                if name != "default":
                    servers.pop(name).stop()  # measure memory with only the default server running
            loaded = memory_of(default.process.pid)
            cache_conversations(default.url, 8, args.turns, 24)
            memory = {"after_load_and_runs": loaded, "with_8_conversations": memory_of(default.process.pid),
                      "kv_cache_mb": kv_cache_bytes(default.url) / 2**20}
            print(f"8 conversations of {args.turns} turns cached: KV {memory['kv_cache_mb']:.0f} MB, resident "
                  f"{memory['with_8_conversations']['rss_mb']:.0f} MB, peak "
                  f"{memory['with_8_conversations']['peak_rss_mb']:.0f} MB", flush=True)
        finally:
            for server in servers.values():
                server.stop()

    base = results["default"][0]["aggregate_tok_s"]
    for rows in results.values():
        for row in rows:
            row["vs_one_stream_default"] = row["aggregate_tok_s"] / base
    report = {**where,
              "tokens_per_stream": args.tokens, "results": results, "memory": memory}
    print()
    print(f"{'server':<18}{'streams':>8}{'tok/s':>9}{'x one':>7}{'ITL p50 (s)':>13}{'ITL p99 (s)':>13}")
    for name, rows in results.items():
        for r in rows:
            print(f"{name:<18}{r['streams']:>8}{r['aggregate_tok_s']:>9.2f}{r['vs_one_stream_default']:>7.2f}"
                  f"{r['itl_p50_s']:>13.3f}{r['itl_p99_s']:>13.3f}")
    save_report(f"concurrency-{model_dir.name}-{where['device']}", report)


if __name__ == "__main__":
    main()
