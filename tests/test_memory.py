"""Memory trimming with the real Llama 3.2 tokenizer and chat template (no model weights needed)."""

import pytest

from webbot.model.memory import Memory, MessageTooLong, group_turns

DATE = "23 Nov 2026"
SYSTEM = "You are a helpful assistant."


@pytest.fixture
def memory(llama_tokenizer):
    def make(max_tokens=8192, ratio=0.25):
        return Memory(llama_tokenizer, max_tokens, ratio, template_kwargs={"date_string": DATE})

    return make


def conversation(turns: int, words: int = 40) -> list[dict]:
    """A history of `turns` user/assistant pairs with distinct, countable text."""
    history = []
    for t in range(turns):
        question = f"Question {t}: " + " ".join(f"ask{t}x{i}" for i in range(words))
        answer = f"Answer {t}: " + " ".join(f"say{t}y{i}" for i in range(words))
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return history


def test_prompt_is_byte_equal_to_the_llama32_format(memory, llama_tokenizer):
    history = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    plan = memory().plan(history, "What is the capital of France?", SYSTEM)
    expected = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        f"Cutting Knowledge Date: December 2023\nToday Date: {DATE}\n\n"
        "You are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert llama_tokenizer.decode(plan.prompt_ids) == expected
    # The ids are exactly the tokenisation of that text: special tokens are single ids.
    assert plan.prompt_ids == llama_tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert plan.prompt_ids[0] == 128000 and plan.prompt_ids.count(128009) == 4  # one <|eot_id|> per message
    assert 128001 not in plan.prompt_ids  # no <|end_of_text|> inside the history
    assert plan.as_dict() == {"used": len(plan.prompt_ids), "budget": 6144, "dropped": 0, "recalled": 0, "pinned": 0,
                                 "passages": 0, "notes": 0, "unnoted": 0}


def test_budget_is_context_minus_reply_reserve(memory):
    assert memory(8192, 0.25).budget == 6144
    assert memory(1000, 0.5).budget == 500


def test_everything_fits_nothing_dropped(memory):
    history = conversation(5)
    plan = memory().plan(history, "next", SYSTEM)
    assert plan.dropped == 0 and plan.first_kept == 0
    assert plan.kept_messages[1:-1] == history


def test_oldest_turns_go_first_and_system_prompt_and_new_message_stay(memory, llama_tokenizer):
    history = conversation(30)
    mem = memory(1200)
    plan = mem.plan(history, "The newest question", SYSTEM)
    assert plan.prompt_tokens <= mem.budget
    assert plan.dropped > 0 and plan.dropped % 2 == 0  # whole turns only
    kept = plan.kept_messages
    assert kept[0] == {"role": "system", "content": SYSTEM}
    assert kept[-1] == {"role": "user", "content": "The newest question"}
    assert kept[1:-1] == history[plan.dropped:]  # a suffix: FIFO
    text = llama_tokenizer.decode(plan.prompt_ids)
    assert "Question 0:" not in text and "Answer 29:" in text and SYSTEM in text


def test_trimming_never_changes_the_stored_history(memory):
    history = conversation(30)
    before = [dict(m) for m in history]
    memory(1000).plan(history, "new", SYSTEM)
    assert history == before


def test_drops_in_chunks_so_the_prefix_stays_stable(memory):
    """Grow a conversation turn by turn: the first kept turn moves rarely, and while it stays,
    each prompt is a token-exact prefix of the next (what a KV cache needs)."""
    mem = memory(4000)
    history, starts, used, previous = [], [], [], None
    moves = 0
    for turn in range(80):
        question = f"Question {turn}: " + " ".join(f"q{turn}w{i}" for i in range(10))
        plan = mem.plan(history, question, SYSTEM)
        assert plan.prompt_tokens <= mem.budget
        if previous is not None:
            if plan.first_kept == previous.first_kept:
                assert plan.prompt_ids[:previous.prompt_tokens] == previous.prompt_ids
            else:
                assert plan.first_kept > previous.first_kept
                moves += 1
        starts.append(plan.first_kept)
        used.append(plan.prompt_tokens)
        previous = plan
        history += [{"role": "user", "content": question},
                    {"role": "assistant", "content": f"Answer {turn}: " + " ".join(f"a{turn}w{i}" for i in range(10))}]
    trimmed_turns = sum(1 for s in starts if s > 0)
    assert trimmed_turns > 30  # the test really exercised trimming
    # Dropping one turn at a time would move the start on every trimmed turn; chunks of
    # `mem.chunk` tokens (750) move it once per chunk of growth (a turn here is ~90 tokens).
    turn_tokens = mem._turn_cost(history[-2:], owner="")
    assert moves <= trimmed_turns * turn_tokens / mem.chunk + 1, starts
    assert moves <= trimmed_turns // 4, starts
    # Each move frees room for several turns: kept history never falls below budget - 2 chunks.
    assert all(p >= mem.budget - 2 * mem.chunk for p in used[40:]), used


def test_a_message_too_long_for_the_budget_is_refused_with_its_size(memory, llama_tokenizer):
    mem = memory(1000)
    message = " ".join(f"word{i}" for i in range(900))
    with pytest.raises(MessageTooLong) as error:
        mem.plan(conversation(2), message, SYSTEM)
    own = len(llama_tokenizer(message, add_special_tokens=False)["input_ids"])
    overhead = len(mem.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": ""}]))
    assert error.value.tokens == own
    assert error.value.limit == mem.budget - overhead
    assert str(error.value) == f"your message is {own} tokens; the limit is {mem.budget - overhead}"


def test_a_message_that_fits_only_alone_drops_all_history(memory):
    mem = memory(1000)
    message = " ".join(f"word{i}" for i in range(300))
    plan = mem.plan(conversation(10), message, SYSTEM)
    assert plan.dropped == 20 and plan.kept_messages[-1]["content"] == message


def test_turns_are_grouped_from_each_user_message():
    history = [{"role": "assistant", "content": "greeting"}, {"role": "user", "content": "a"},
               {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert [len(t) for t in group_turns(history)] == [1, 2, 1]
