"""Time to first token at turns 1..N of a growing conversation: KV cache reuse on against off.

Two real server processes on the same model, one with WEBBOT_KV_REUSE=on (the default) and
one with it off, are sent the same conversation through the streaming /v1/chat/completions,
turn by turn, interleaved so machine noise hits both alike. Each turn adds a user message
of about 160 tokens and the server's own reply (the client sends the history back, as any
OpenAI client does), so the conversation grows by about 190 tokens a turn. The prompt
tokens each server reused or computed come from its /metrics.

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
    """The server's reused and computed prompt token counters."""
    counts = {}
    scraped = requests.get(url + "/metrics", headers=METRICS_AUTH, timeout=30).text
    for family in text_string_to_metric_families(scraped):
        for sample in family.samples:
            if sample.name == "webbot_prompt_tokens_total":
                counts[sample.labels["source"]] = sample.value
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--reply-tokens", type=int, default=24)
    args = parser.parse_args()

    model_dir, where = setup(args.model)
    modes = ("on", "off")
    rows = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {mode: Server(model_dir, Path(tmp) / mode, Path(tmp) / f"{mode}.log", WEBBOT_MAX_TOKENS="8192",
                                WEBBOT_KV_REUSE=mode).start(timeout=1800) for mode in modes}
        try:
            histories = {mode: [] for mode in modes}
            for turn in range(1, args.turns + 1):
                for mode in modes:
                    server, history = servers[mode], histories[mode]
                    history.append({"role": "user", "content": question(turn)})
                    before = prompt_tokens(server.url)
                    result = timed_stream(server.url, history, args.reply_tokens)
                    after = prompt_tokens(server.url)
                    history.append({"role": "assistant", "content": result["text"]})
                    rows[mode].append({"turn": turn, "prompt_tokens": result["prompt_tokens"],
                                       "reused": after["reused"] - before["reused"],
                                       "computed": after["computed"] - before["computed"],
                                       "ttft_s": result["ttft_s"], "decode_tok_s": result["decode_tok_s"]})
                print(f"turn {turn:>2}: {rows['on'][-1]['prompt_tokens']:>5} prompt tokens; first token "
                      f"{rows['on'][-1]['ttft_s']:6.2f} s with reuse ({rows['on'][-1]['reused']:.0f} reused), "
                      f"{rows['off'][-1]['ttft_s']:6.2f} s without", flush=True)
            memory = {mode: memory_of(servers[mode].process.pid) for mode in modes}
        finally:
            for server in servers.values():
                server.stop()

    on, off = rows["on"], rows["off"]
    report = {
        **where,
        "reply_tokens": args.reply_tokens, "reuse": on, "no_reuse": off, "memory": memory,
        "last_over_first_with_reuse": on[-1]["ttft_s"] / on[0]["ttft_s"],
        "last_over_first_without": off[-1]["ttft_s"] / off[0]["ttft_s"],
        "last_turn_speedup": off[-1]["ttft_s"] / on[-1]["ttft_s"],
    }
    print()
    print(f"{'turn':<6}{'prompt':>8}{'reused':>8}{'TTFT reuse (s)':>16}{'TTFT no reuse (s)':>19}{'ratio':>8}")
    for a, b in zip(on, off, strict=True):
        print(f"{a['turn']:<6}{a['prompt_tokens']:>8}{a['reused']:>8.0f}{a['ttft_s']:>16.2f}{b['ttft_s']:>19.2f}"
              f"{b['ttft_s'] / a['ttft_s']:>8.1f}")
    print(f"turn {args.turns} / turn 1 with reuse: {report['last_over_first_with_reuse']:.2f} "
          f"(without: {report['last_over_first_without']:.2f})")
    save_report(f"turns-{model_dir.name}-{where['device']}", report)


if __name__ == "__main__":
    main()
