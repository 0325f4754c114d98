"""Time to first token at turns 1..N of a growing conversation: KV cache reuse on, off, and on with a
restart before one turn (the kept caches come back from the disk tier).

Three real server processes on the same model, one with WEBBOT_KV_REUSE=on (the default),
one with it off, and one like the first that is stopped (SIGTERM) and started again before
turn `--restart-before`, are sent the same conversation through the streaming
/v1/chat/completions, turn by turn, interleaved so machine noise hits all alike. Each turn adds a user message
of about 160 tokens and the server's own reply (the client sends the history back, as any
OpenAI client does), so the conversation grows by about 190 tokens a turn. The prompt
tokens each server reused (from RAM or from disk) or computed come from its /metrics.

    .venv/bin/python -m bench.bench_turns                    # Llama-3.2-1B shape, random weights
    .venv/bin/python -m bench.bench_turns --model ~/.cache/webbot-test-models/smollm2

Prints a table and writes JSON to bench/results/turns-MODEL-DEVICE.json.
"""

import argparse
import tempfile
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.common import MODEL_HELP, memory_of, save_report, setup, timed_stream
from harness.server_process import METRICS_AUTH, Server


def question(turn: int) -> str:
    """A user message of about 160 Llama 3 tokens."""
    return f"Turn {turn}. " + " ".join(f"Tell me more about topic {turn}.{i}, with one example." for i in range(11))


def prompt_tokens(url: str) -> dict:
    """The server's prompt token counters: reused, computed, and reused from disk."""
    counts = {}
    scraped = requests.get(url + "/metrics", headers=METRICS_AUTH, timeout=30).text
    for family in text_string_to_metric_families(scraped):
        for sample in family.samples:
            if sample.name == "webbot_prompt_tokens_total":
                counts[sample.labels["source"]] = sample.value
            elif sample.name == "webbot_reused_prompt_tokens_total" and sample.labels["tier"] == "disk":
                counts["disk"] = sample.value
    return counts


def one_turn(url: str, history: list[dict], message: str, reply_tokens: int, turn: int) -> dict:
    """Send `message` after `history` through the streaming /v1 and add it and the reply to `history`; the turn's
    prompt tokens, reused (from RAM or disk), read from disk and computed, and its timings."""
    history.append({"role": "user", "content": message})
    before = prompt_tokens(url)
    result = timed_stream(url, history, reply_tokens)
    after = prompt_tokens(url)
    history.append({"role": "assistant", "content": result["text"]})
    return {"turn": turn, "prompt_tokens": result["prompt_tokens"], "reused": after["reused"] - before["reused"],
            "from_disk": after.get("disk", 0) - before.get("disk", 0),
            "computed": after["computed"] - before["computed"], "ttft_s": result["ttft_s"],
            "decode_tok_s": result["decode_tok_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--reply-tokens", type=int, default=24)
    parser.add_argument("--restart-before", type=int, default=10, help="the turn before which the third server "
                                                                         "restarts (default 10)")
    args = parser.parse_args()

    model_dir, where = setup(args.model)
    modes = ("on", "off", "restart")
    rows = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {mode: Server(model_dir, Path(tmp) / mode, Path(tmp) / f"{mode}.log", WEBBOT_MAX_TOKENS="8192",
                                WEBBOT_KV_REUSE="off" if mode == "off" else "on").start(timeout=1800)
                   for mode in modes}
        try:
            histories = {mode: [] for mode in modes}
            for turn in range(1, args.turns + 1):
                if turn == args.restart_before:
                    servers["restart"].stop()  # SIGTERM: the kept caches are written to disk
                    servers["restart"].start(timeout=1800)
                for mode in modes:
                    rows[mode].append(one_turn(servers[mode].url, histories[mode], question(turn), args.reply_tokens,
                                               turn))
                print(f"turn {turn:>2}: {rows['on'][-1]['prompt_tokens']:>5} prompt tokens; first token "
                      f"{rows['on'][-1]['ttft_s']:6.2f} s with reuse ({rows['on'][-1]['reused']:.0f} reused), "
                      f"{rows['off'][-1]['ttft_s']:6.2f} s without, {rows['restart'][-1]['ttft_s']:6.2f} s on the "
                      f"restarted one ({rows['restart'][-1]['from_disk']:.0f} from disk)", flush=True)
            memory = {mode: memory_of(servers[mode].process.pid) for mode in modes}
        finally:
            for server in servers.values():
                server.stop()

    on, off, restart = rows["on"], rows["off"], rows["restart"]
    after = restart[args.restart_before - 1]
    warm = on[args.restart_before - 1]
    report = {
        **where,
        "reply_tokens": args.reply_tokens, "reuse": on, "no_reuse": off, "restart": restart, "memory": memory,
        "restart_before_turn": args.restart_before,
        "after_restart_from_disk_share": after["from_disk"] / after["prompt_tokens"],
        "after_restart_over_warm_ttft": after["ttft_s"] / warm["ttft_s"],
        "last_over_first_with_reuse": on[-1]["ttft_s"] / on[0]["ttft_s"],
        "last_over_first_without": off[-1]["ttft_s"] / off[0]["ttft_s"],
        "last_turn_speedup": off[-1]["ttft_s"] / on[-1]["ttft_s"],
    }
    print()
    print(f"{'turn':<6}{'prompt':>8}{'reused':>8}{'TTFT reuse (s)':>16}{'TTFT no reuse (s)':>19}{'ratio':>8}"
          f"{'TTFT restarted (s)':>20}{'from disk':>11}")
    for a, b, c in zip(on, off, restart, strict=True):
        mark = " <- restart" if c["turn"] == args.restart_before else ""
        print(f"{a['turn']:<6}{a['prompt_tokens']:>8}{a['reused']:>8.0f}{a['ttft_s']:>16.2f}{b['ttft_s']:>19.2f}"
              f"{b['ttft_s'] / a['ttft_s']:>8.1f}{c['ttft_s']:>20.2f}{c['from_disk']:>11.0f}{mark}")
    print(f"turn {args.turns} / turn 1 with reuse: {report['last_over_first_with_reuse']:.2f} "
          f"(without: {report['last_over_first_without']:.2f})")
    print(f"turn {args.restart_before} after a restart: {report['after_restart_from_disk_share']:.0%} of the prompt "
          f"from disk, first token {report['after_restart_over_warm_ttft']:.2f}x the server that kept running")
    save_report(f"turns-{model_dir.name}-{where['device']}", report)


if __name__ == "__main__":
    main()
