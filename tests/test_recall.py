"""Recall and pins with the real Llama 3.2 tokenizer and chat template (no model weights): what comes back from
outside memory, where it goes, and that the budget arithmetic never overruns. The answers of a real model are
in test_recall_model.py."""

import random

import pytest

from harness.recall_chat import ADA
from webbot.model import recall
from webbot.model.memory import Memory, MessageTooLong, recall_block

DATE = "23 Nov 2026"
SYSTEM = "You are a helpful assistant."


@pytest.fixture
def memory(llama_tokenizer):
    def make(max_tokens=512, ratio=0.25, **kwargs):
        return Memory(llama_tokenizer, max_tokens, ratio, template_kwargs={"date_string": DATE}, **kwargs)

    return make


def chat(first: str, turns: int, words: int = 12) -> list[dict]:
    """`first`, its reply, then `turns` filler turns of distinct words."""
    history = [{"role": "user", "content": first}, {"role": "assistant", "content": "Nice to meet you!"}]
    for t in range(turns):
        history += [{"role": "user", "content": f"Filler {t}: " + " ".join(f"ask{t}w{i}" for i in range(words))},
                    {"role": "assistant", "content": f"Reply {t}: " + " ".join(f"say{t}w{i}" for i in range(words))}]
    return history


def test_ranking_uses_stems_prefixes_and_skips_words_that_say_nothing():
    candidates = ["My cats are called Pixel and Byte.", "The weather was fine.", "I drove to Lisbon on Monday.",
                  "Café opening hours are long."]
    assert recall.rank(candidates, "What is my cat called?", 3) == [0]  # "cat" finds "cats" (Porter stems)
    assert recall.rank(candidates, "Lisb?", 3) == [2]  # a prefix
    assert recall.rank(candidates, "cafe", 3) == [3]  # accents ignored
    assert recall.rank(candidates, "What is it?", 3) == []  # only words that say nothing: no recall
    assert set(recall.rank(candidates, 'cat" OR weather NEAR(* ', 3)) == {0, 1}  # FTS5 syntax is only ever text
    assert recall.rank([], "cat", 3) == [] and recall.rank(candidates, "cat", 0) == []


def test_the_better_matches_rank_first_and_a_weak_one_is_left_out():
    unrelated = [f"Unrelated sentence number {i} about trains and rivers." for i in range(10)]
    candidates = ["My cat Pixel is grey.", "The cat next door is grey and very loud at night.", "My cat likes fish.",
                  "Dogs bark.", *unrelated]
    # "My cat likes fish." shares only "cat" and scores under half the best match: not worth the prompt's room
    assert recall.rank(candidates, "tell me about my grey cat", 4) == [0, 1]


def test_nothing_outside_memory_is_todays_prompt_byte_for_byte(memory):
    history = chat(ADA, 2)
    with_recall = memory().plan(history, "What is my cat called?", SYSTEM, recall=True)
    without = memory().plan(history, "What is my cat called?", SYSTEM, recall=False)
    assert with_recall.dropped == 0 and with_recall.recalled == []
    assert with_recall.prompt_text == without.prompt_text and with_recall.prompt_ids == without.prompt_ids


def test_recall_brings_back_the_matching_message_right_before_the_new_one(memory, llama_tokenizer):
    history = chat(ADA, 12)
    plan = memory().plan(history, "What is my cat called?", SYSTEM, recall=True)
    assert plan.dropped > 0 and plan.recalled == [0]
    text = plan.prompt_text
    new_turn = text.rindex("<|start_header_id|>user<|end_header_id|>\n\n")
    assert text.index(f'Earlier I told you: "{ADA}"\n\nWhat is my cat called?') == new_turn + len(
        "<|start_header_id|>user<|end_header_id|>\n\n")  # the new turn, after the whole kept history
    assert text.index(ADA) < text.index("What is my cat called?")
    assert text.count(ADA) == 1 and len(plan.prompt_ids) <= plan.budget
    assert plan.as_dict()["recalled"] == 1


def test_recall_off_or_no_match_leaves_the_prompt_alone(memory):
    history = chat(ADA, 12)
    off = memory().plan(history, "What is my cat called?", SYSTEM, recall=False)
    unmatched = memory().plan(history, "What is the weather like?", SYSTEM, recall=True)
    assert off.recalled == [] and unmatched.recalled == []
    assert ADA not in off.prompt_text and "Earlier I told you" not in unmatched.prompt_text
    # The window depends on the setting (recall keeps room free), never on whether this message matched
    matched = memory().plan(history, "What is my cat called?", SYSTEM, recall=True)
    assert unmatched.first_kept == matched.first_kept >= off.first_kept


def test_the_next_turn_reuses_everything_before_the_recalled_block(memory):
    m = memory()
    history = chat(ADA, 12)
    asked = "What is my cat called?"
    first = m.plan(history, asked, SYSTEM, recall=True)
    assert first.recalled
    block_at = first.prompt_text.index(recall_block([history[i] for i in first.recalled]))
    history += [{"role": "user", "content": asked}, {"role": "assistant", "content": "Your cat is called Pixel."}]
    second = m.plan(history, "And what colour is the sky?", SYSTEM, recall=True)
    assert second.first_kept == first.first_kept  # the window did not move this turn
    assert second.prompt_text[:block_at] == first.prompt_text[:block_at]
    shared = len(m.encode(first.prompt_text[:block_at]))
    assert second.prompt_ids[:shared - 1] == first.prompt_ids[:shared - 1]


def test_budget_arithmetic_never_overruns(memory, llama_tokenizer):
    generator = random.Random(7)
    words = ["cat", "Pixel", "Lisbon", "number", "4172", "garden", "river", "blue", "train", "violin"]
    for max_tokens in (384, 512, 1024):
        m = memory(max_tokens)
        for _ in range(12):
            history = []
            for _ in range(generator.randint(0, 30)):
                length = generator.choice([3, 10, 40, 120])
                history += [{"role": "user", "content": " ".join(generator.choice(words) for _ in range(length))},
                            {"role": "assistant", "content": " ".join(generator.choice(words) for _ in range(length))}]
            pins = sorted(generator.sample(range(len(history)), min(len(history), generator.randint(0, 4))))
            message = " ".join(generator.choice(words) for _ in range(generator.choice([2, 20, 100])))
            try:
                plan = m.plan(history, message, SYSTEM, pins=pins, recall=True)
            except MessageTooLong:
                continue
            assert len(plan.prompt_ids) <= m.budget
            assert plan.prompt_ids == m.encode(plan.prompt_text)  # counted with the real template
            assert set(plan.recalled) <= set(range(plan.first_kept))
            assert len(plan.recalled) <= 3 and set(plan.pinned) <= set(pins)
            if plan.recalled:
                block = recall_block([history[i] for i in plan.recalled])
                assert block + "\n\n" + message in plan.prompt_text
                assert len(m.encode(block + "\n\n")) <= m.recall_budget + 2
            if plan.pinned:
                system = plan.prompt_text[:plan.prompt_text.index("<|eot_id|>")]
                pinned_text = system[system.index("Pinned in this conversation"):]
                assert len(m.encode(pinned_text)) <= m.pin_budget + 2


def test_a_new_message_that_fits_alone_still_fits_beside_pins(memory):
    m = memory(512)
    history = chat(ADA, 12)
    room = m.budget - len(m.plan([], "", SYSTEM, pins=[]).prompt_ids)
    longest = " ".join(["word"] * (room - m.pin_budget - 20))
    plan = m.plan(history, longest, SYSTEM, pins=[0], recall=True)
    assert len(plan.prompt_ids) <= m.budget
    with pytest.raises(MessageTooLong):
        m.plan(history, " ".join(["word"] * (room + 10)), SYSTEM, pins=[0], recall=True)


def test_pins_ride_in_the_system_message_and_change_the_prefix_only_when_pins_change(memory):
    m = memory()
    history = chat(ADA, 12)
    plan = m.plan(history, "Which fruit is yellow?", SYSTEM, pins=[0], recall=True)
    assert plan.pinned == [0] and plan.as_dict()["pinned"] == 1
    system = plan.prompt_text[:plan.prompt_text.index("<|eot_id|>")]
    assert SYSTEM in system and ADA in system
    assert plan.recalled == []  # nothing about fruit outside memory
    cat = m.plan(history, "What is my cat called?", SYSTEM, pins=[0], recall=True)
    assert cat.recalled == [0]  # a pinned message that matches comes next to the question as well
    history += [{"role": "user", "content": "Which fruit is yellow?"}, {"role": "assistant", "content": "A banana."}]
    later = m.plan(history, "Which tree is tallest?", SYSTEM, pins=[0], recall=True)
    head = plan.prompt_text[:plan.prompt_text.index("<|eot_id|>") + len("<|eot_id|>")]
    assert later.prompt_text.startswith(head)


def test_a_pin_too_long_for_its_budget_is_left_out(memory):
    m = memory()
    history = chat(" ".join(["long"] * 200), 2)
    plan = m.plan(history, "Hello", SYSTEM, pins=[0, 1])
    assert plan.pinned == [1] and "long long" not in plan.prompt_text.split("<|eot_id|>")[0]
    assert "Nice to meet you!" in plan.prompt_text.split("<|eot_id|>")[0]


def test_pins_are_private_so_the_head_is_not_shared(memory):
    m = memory()
    history = chat(ADA, 1)
    assert m.plan(history, "Hello", SYSTEM, public_head=True).public_tokens > 0
    assert m.plan(history, "Hello", SYSTEM, public_head=True, pins=[0]).public_tokens == 0

