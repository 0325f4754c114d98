"""Whether notes of turns outside memory (WEBBOT_MEMORY_SUMMARY) pay with a small model: what the model writes,
what the grounding filter keeps, and which planted facts it then answers.

SmolLM2-135M-Instruct (real weights) at a 512-token context, greedy: a first message with
facts (harness/recall_chat.py), 12 short turns whose replies the model writes, then the
product's own `webbot.model.notes.generate` writes notes of what fell out of memory. For
each conversation: the model's raw lines, the lines kept (grounded in the turns), the planted
facts the kept notes hold, and the questions about the facts answered four ways: nothing
(the window alone), the notes, recall, notes and recall. Llama-3.2-1B's real weights are
not on these machines (tests and benchmarks run offline), so it is not measured here:
`--model DIR` runs the same on any local model. Correctness, not speed: counts, and the
seconds the notes took.

    .venv/bin/python -m bench.notes_quality                     # about two minutes
    .venv/bin/python -m bench.notes_quality --quant int8        # the CPU default's weights

Prints each answer and the scores, and writes JSON to bench/results/notes-quality-MODEL-QUANT.json.
"""

import argparse
import time
from pathlib import Path

from bench.common import save_report
from harness import assets
from harness.recall_chat import FILLER, QUESTIONS

CONTEXT = 512
WAYS = {"nothing": (False, False), "notes": (True, False), "recall": (False, True), "notes and recall": (True, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local model directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--quant", default="none", choices=("none", "int8"))
    args = parser.parse_args()

    from chat_bot import ChatBot
    from webbot.model import notes
    from webbot.model.stream import SamplingParams

    model_dir = Path(args.model) if args.model else assets.smollm2_dir()
    bot = ChatBot(str(model_dir), max_tokens=CONTEXT, quant=args.quant).load()
    raw_answers = []
    original_clean = notes.clean

    def keep_raw(text, messages, cut_off=False):  # the model's own answer, before the filter, for the report
        raw_answers.append(text)
        return original_clean(text, messages, cut_off)

    notes.clean = keep_raw
    conversations, scores = [], {way: 0 for way in WAYS}
    try:
        for first, questions in QUESTIONS.items():
            history = []
            for text in [first, *FILLER]:
                plan = bot.plan(history, text)
                reply = "".join(bot.generate(plan, SamplingParams(temperature=0.0, max_new_tokens=40)))
                history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
            outside = bot.plan(history, "?").first_kept
            started = time.perf_counter()
            count, note = notes.generate(bot, history[:outside], "bench")
            seconds = time.perf_counter() - started
            raw = raw_answers[-1]
            raw_lines = [line for line in raw.splitlines() if line.strip()]
            planted = [word for _, word in questions]
            print(f"--- notes of {count} messages ({seconds:.1f} s)\nraw: {raw!r}\nkept: {note!r}", flush=True)
            answers = []
            for question, word in questions:
                for way, (with_notes, with_recall) in WAYS.items():
                    plan = bot.plan(history, question, recall=with_recall,
                                    notes={count - 1: note} if with_notes else None)
                    reply = "".join(bot.generate(plan, SamplingParams(temperature=0.0, max_new_tokens=30)))
                    right = word.lower() in reply.lower()
                    scores[way] += right
                    answers.append({"question": question, "way": way, "answer": reply, "right": right})
                    print(f"  [{way}] {question!r} -> {reply[:70]!r}", flush=True)
            conversations.append({"first": first, "noted_messages": count, "seconds": round(seconds, 2),
                                  "raw": raw, "raw_lines": len(raw_lines), "kept": note,
                                  "kept_lines": len(note.splitlines()),
                                  "planted_in_notes": [w for w in planted if w.lower() in note.lower()],
                                  "planted": planted, "answers": answers})
    finally:
        notes.clean = original_clean
        bot.close()
    total = sum(len(q) for q in QUESTIONS.values())
    for conversation in conversations:
        print(f"{conversation['first'][:40]!r}: {conversation['raw_lines']} raw lines, {conversation['kept_lines']} "
              f"kept; planted facts in the notes: {len(conversation['planted_in_notes'])} of "
              f"{len(conversation['planted'])}")
    for way, right in scores.items():
        print(f"answered with {way}: {right} of {total}")
    save_report(f"notes-quality-{model_dir.name}-{args.quant}",
                {"model": model_dir.name, "quant": args.quant, "context": CONTEXT, "conversations": conversations,
                 "answered": scores, "questions": total})


if __name__ == "__main__":
    main()
