"""Which words bring a recalled message back best: forms of the recalled block tried on a real small model.

SmolLM2-135M-Instruct (real weights) at a 512-token context, greedy: a first message with
facts (harness/recall_chat.py), 12 short turns whose replies the model writes, then
questions about the facts, once the first message is outside memory. Each form puts the
same recalled messages (chosen by webbot.model.recall) right before the question, in its own
words; a form scores a point when the answer holds the planted word. Two controls: no recall,
and the first message pinned (in the system message) with recall off. The product uses
`webbot.model.memory.recall_block` ("Earlier I told you: ..."); the others are what it was
chosen over. Correctness, not speed: the figure is a count, and the machine need not be quiet.

    .venv/bin/python -m bench.recall_forms

Prints each answer and the scores, and writes JSON to bench/results/recall-forms-smollm2.json.
"""

from bench.common import save_report
from harness import assets
from harness.recall_chat import FILLER, QUESTIONS


def _line(message: dict) -> str:
    return " ".join(message["content"].split())


FORMS = {
    "product: 'Earlier I told you: \"...\"'": None,  # memory.recall_block itself
    "heading, 'I said: \"...\"'": lambda ms: "(Earlier in this conversation:)\n" + "\n".join(
        f'{"I" if m["role"] == "user" else "You"} said: "{_line(m)}"' for m in ms),
    "heading, 'Me: ...'": lambda ms: "Context from earlier in this conversation:\n" + "\n".join(
        f'{"Me" if m["role"] == "user" else "You"}: {_line(m)}' for m in ms),
    "'Remember what I said earlier'": lambda ms: "Remember what I said earlier in this conversation:\n" + "\n".join(
        ("" if m["role"] == "user" else "You: ") + _line(m) for m in ms),
}


def main() -> None:
    from chat_bot import ChatBot
    from webbot.model import memory
    from webbot.model.stream import SamplingParams

    bot = ChatBot(str(assets.smollm2_dir()), max_tokens=512).load()
    product = memory.recall_block

    def ask(history, text, recall, pins=()):
        plan = bot.plan(history, text, recall=recall, pins=pins)
        return plan, "".join(bot.generate(plan, SamplingParams(temperature=0.0, max_new_tokens=40)))

    try:
        histories = {}
        for first in QUESTIONS:
            history = []
            for text in [first, *FILLER]:
                _, reply = ask(history, text, False)
                history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
            histories[first] = history
        results = {}
        for name, form in FORMS.items():
            memory.recall_block = form or product
            answers = []
            for first, questions in QUESTIONS.items():
                for question, word in questions:
                    plan, reply = ask(histories[first], question, True)
                    answers.append({"question": question, "word": word, "recalled": plan.recalled,
                                    "dropped": plan.dropped, "answer": reply,
                                    "right": word.lower() in reply.lower()})
                    print(f"  [{name}] {question!r} -> {reply[:80]!r}", flush=True)
            results[name] = {"right": sum(a["right"] for a in answers), "of": len(answers), "answers": answers}
            print(f"{name}: {results[name]['right']} of {len(answers)}", flush=True)
        memory.recall_block = product
        control = []
        for first, questions in QUESTIONS.items():
            for question, word in questions:
                _, reply = ask(histories[first], question, False)
                control.append({"question": question, "answer": reply, "right": word.lower() in reply.lower()})
        print(f"no recall: {sum(c['right'] for c in control)} of {len(control)}")
        pinned = []  # the first message pinned (in the system message), recall off
        for first, questions in QUESTIONS.items():
            for question, word in questions:
                _, reply = ask(histories[first], question, False, pins=[0])
                pinned.append({"question": question, "answer": reply, "right": word.lower() in reply.lower()})
        print(f"pinned, no recall: {sum(p['right'] for p in pinned)} of {len(pinned)}")
    finally:
        memory.recall_block = product
        bot.close()
    save_report("recall-forms-smollm2", {"model": "SmolLM2-135M-Instruct", "context": 512, "forms": results,
                                         "no_recall": control, "pinned_no_recall": pinned})


if __name__ == "__main__":
    main()
