"""Time to first token by turn when recall is active: a conversation that outgrows memory, with a question each
turn that recalls its first message, on a server with recall on and one with it off.

Two real server processes on the same model and a small context (WEBBOT_MAX_TOKENS, 2048 by
default, so the conversation outgrows memory within 20 turns), one with WEBBOT_RECALL=on
(the default) and one with it off, are sent the same conversation through the streaming
/v1/chat/completions, turn by turn, interleaved so machine noise hits both alike. The first
message states a fact; every later message is about 60 tokens and names the fact's words,
so once the first message is outside memory, recall brings it back each turn. The prompt
tokens each server reused or computed come from its /metrics. The goal: with recall on,
a turn's first token within 1.5x turn 2's (the TTFT goal of bench_turns; turn 1 is the short
fact) on every turn where the window stays put, because recall goes right before the new
message and the kept history's cache stays valid. The turns where the window moves (every
quarter of the budget of growth, with recall on or off) recompute the prompt; they are
reported apart.

    .venv/bin/python -m bench.bench_recall                    # Llama-3.2-1B shape, random weights
    .venv/bin/python -m bench.bench_recall --model ~/.cache/webbot-test-models/smollm2

Prints a table and writes JSON to bench/results/recall-MODEL-DEVICE.json.
"""

import argparse
import tempfile
from pathlib import Path

from bench.bench_turns import one_turn
from bench.common import MODEL_HELP, save_report, setup
from harness.server_process import Server

FACT = "Hi! My name is Ada and I live in Lisbon. My cat is called Pixel and she is grey."


def question(turn: int) -> str:
    """A user message of about 60 tokens that names the fact's words (the cat, Pixel)."""
    return (f"Turn {turn}. Thinking about my cat Pixel again: " +
            " ".join(f"tell me idea {turn}.{i} for a game with a cat." for i in range(4)))


def steady(rows: list[dict]) -> list[dict]:
    """The turns after the conversation outgrew memory where the window stayed put (the kept history's cache
    applied: over half of the prompt reused); a turn where the window moved recomputes the whole prompt."""
    outgrown = next((i for i, r in enumerate(rows) if i and r["prompt_tokens"] < rows[i - 1]["prompt_tokens"]),
                    len(rows))
    return [r for r in rows[outgrown:] if r["reused"] > r["prompt_tokens"] / 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--turns", type=int, default=26)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--reply-tokens", type=int, default=24)
    args = parser.parse_args()

    model_dir, where = setup(args.model)
    modes = ("on", "off")
    rows = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {mode: Server(model_dir, Path(tmp) / mode, Path(tmp) / f"{mode}.log",
                                WEBBOT_MAX_TOKENS=str(args.context), WEBBOT_RECALL=mode).start(timeout=1800)
                   for mode in modes}
        try:
            histories = {mode: [] for mode in modes}
            for turn in range(1, args.turns + 1):
                for mode in modes:
                    rows[mode].append(one_turn(servers[mode].url, histories[mode],
                                               FACT if turn == 1 else question(turn), args.reply_tokens, turn))
                on, off = rows["on"][-1], rows["off"][-1]
                print(f"turn {turn:>2}: recall on {on['prompt_tokens']:>5} prompt tokens, {on['reused']:>5.0f} "
                      f"reused, first token {on['ttft_s']:5.2f} s; off {off['prompt_tokens']:>5} tokens, "
                      f"{off['reused']:>5.0f} reused, {off['ttft_s']:5.2f} s", flush=True)
        finally:
            for server in servers.values():
                server.stop()

    on, off = rows["on"], rows["off"]
    # Turn 1 is the short fact; turn 2 is the first of the usual length.
    kept_on, kept_off = steady(on), steady(off)
    report = {
        **where, "context": args.context, "reply_tokens": args.reply_tokens, "recall_on": on, "recall_off": off,
        "steady_turns_on": [r["turn"] for r in kept_on], "steady_turns_off": [r["turn"] for r in kept_off],
        "worst_steady_over_turn2_on": max(r["ttft_s"] for r in kept_on) / on[1]["ttft_s"] if kept_on else None,
        "worst_steady_over_turn2_off": max(r["ttft_s"] for r in kept_off) / off[1]["ttft_s"] if kept_off else None,
        "mean_ttft_on_over_off": sum(r["ttft_s"] for r in on[1:]) / sum(r["ttft_s"] for r in off[1:]),
        "mean_steady_ttft_on": sum(r["ttft_s"] for r in kept_on) / len(kept_on) if kept_on else None,
        "mean_steady_ttft_off": sum(r["ttft_s"] for r in kept_off) / len(kept_off) if kept_off else None,
        "reused_share_steady_on": (sum(r["reused"] for r in kept_on) / sum(r["prompt_tokens"] for r in kept_on)
                                   if kept_on else None),
    }
    print()
    print(f"{'turn':<6}{'prompt on':>10}{'reused on':>11}{'TTFT on (s)':>13}{'prompt off':>12}{'reused off':>12}"
          f"{'TTFT off (s)':>14}")
    for a, b in zip(on, off, strict=True):
        mark = "  window stayed (on)" if a in kept_on else ""
        print(f"{a['turn']:<6}{a['prompt_tokens']:>10}{a['reused']:>11.0f}{a['ttft_s']:>13.2f}{b['prompt_tokens']:>12}"
              f"{b['reused']:>12.0f}{b['ttft_s']:>14.2f}{mark}")
    if kept_on:
        print(f"recall on, turns past memory where the window stayed ({len(kept_on)}): worst first token "
              f"{report['worst_steady_over_turn2_on']:.2f}x turn 2's, {report['reused_share_steady_on']:.0%} of "
              f"their prompts reused")
    if kept_off:
        print(f"recall off, the same: worst {report['worst_steady_over_turn2_off']:.2f}x turn 2's")
    if kept_on and kept_off:
        print(f"mean first token on those turns: {report['mean_steady_ttft_on']:.2f} s with recall, "
              f"{report['mean_steady_ttft_off']:.2f} s without")
    print(f"mean first token over all turns, recall on / off: {report['mean_ttft_on_over_off']:.2f}")
    save_report(f"recall-{model_dir.name}-{where['device']}", report)


if __name__ == "__main__":
    main()
