"""KV cache reuse across turns and batched decoding, on real models (no mocks).

The tiny random-weight Llama (real Llama 3.2 tokenizer and template) checks the
mechanics token for token; SmolLM2-135M-Instruct (a real model whose ChatML template
keeps replies as written) checks that a whole earlier reply is reused.
"""

import threading
import time

import pytest

from chat_bot import ChatBot
from tests.helpers import QUESTIONS, ModelStandIn, converse, fake_kv, greedy, greedy_streams, plain_greedy
from webbot.model.kv_cache import common_prefix
from webbot.model.stream import SamplingParams


def test_reusing_the_cache_gives_the_same_tokens_as_not_reusing_it(tiny_model_dir):
    on = ChatBot(str(tiny_model_dir), max_tokens=2048).load()
    off = ChatBot(str(tiny_model_dir), max_tokens=2048, kv_reuse=False).load()
    with_reuse, without = converse(on, QUESTIONS), converse(off, QUESTIONS)
    for (_, a), (_, b) in zip(with_reuse, without, strict=True):
        assert a.prompt_ids == b.prompt_ids
        assert a.generated_ids == b.generated_ids and len(a.generated_ids) == 24
    assert all(stream.reused_tokens == 0 for _, stream in without)
    for (_, before), (_, after) in zip(with_reuse, with_reuse[1:], strict=False):
        # the next prompt continues the exact ids of the last one, and at least all of it is reused
        assert after.prompt_ids[:before.prompt_tokens] == before.prompt_ids
        assert after.reused_tokens >= before.prompt_tokens
    computed = sum(s.prompt_tokens - s.reused_tokens for _, s in with_reuse)
    assert computed < sum(s.prompt_tokens for _, s in without) / 2
    last = with_reuse[-1][1]
    assert last.generated_ids == plain_greedy(on, last.prompt_ids, 24)
    assert len(on.cache) == 1  # one conversation, one cached sequence: earlier turns were superseded


def test_a_whole_earlier_reply_is_reused_token_for_token(smollm2_dir):
    bot = ChatBot(str(smollm2_dir), max_tokens=2048).load()
    turns = converse(bot, ["What is the capital of France?", "And of Italy?", "Which is bigger?"], 40)
    assert "Paris" in turns[0][1].text
    for (_, before), (_, after) in zip(turns, turns[1:], strict=False):
        earlier = before.prompt_ids + before.generated_ids  # ids the model generated, not the re-tokenised text
        assert after.prompt_ids[:len(earlier)] == earlier
        assert after.reused_tokens == len(earlier) - 1  # all but the last token had been fed to the model
    last = turns[-1][1]
    assert last.generated_ids == plain_greedy(bot, last.prompt_ids, len(last.generated_ids))


def test_least_recently_used_caches_are_evicted_under_a_tiny_budget(tiny_model_dir):
    # 2 layers x (keys + values) x 2 heads x 8 dims x 4 bytes = 256 bytes a token: ~2 conversations fit
    bot = ChatBot(str(tiny_model_dir), max_tokens=2048, kv_cache_mb=0.05).load()
    budget = bot.cache.budget
    systems = ["You answer about the sea.", "You answer about mountains.", "You answer about deserts."]
    first_turns = [converse(bot, QUESTIONS[:1], system=s)[0][1] for s in systems]
    sizes = [len(s.prompt_ids) + len(s.generated_ids) - 1 for s in first_turns]
    assert 2 * max(sizes) * 256 <= budget < sum(sizes) * 256  # two fit, three do not
    assert bot.cache.nbytes <= budget
    assert bot.metrics.evictions._value.get() >= 1
    held = [entry.kv is not None for entry in bot.cache._entries]
    assert held == [False, True, True]  # the least recently used lost its tensors, kept its ids

    # The evicted conversation continues with a full prefill (but for a template head it shares
    # with the others) and the same tokens as a fresh prefill gives.
    a_first = first_turns[0]
    history = [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": a_first.text}]
    stream = bot.generate(bot.plan(history, QUESTIONS[1], systems[0]), greedy())
    list(stream)
    others = [s.prompt_ids + s.generated_ids for s in first_turns[1:]]
    assert stream.reused_tokens == max(common_prefix(stream.prompt_ids, ids) for ids in others) < 40
    assert stream.generated_ids == plain_greedy(bot, stream.prompt_ids, 24)
    assert bot.cache.nbytes <= budget


@pytest.mark.slow
def test_a_trim_that_moves_the_prefix_rebuilds_once_and_changes_no_token(tiny_model_dir):
    # A 320-token context: the history overflows after a few turns and old turns are dropped in chunks.
    on = ChatBot(str(tiny_model_dir), max_tokens=320).load()
    off = ChatBot(str(tiny_model_dir), max_tokens=320, kv_reuse=False).load()
    questions = QUESTIONS * 2
    with_reuse, without = converse(on, questions, 16), converse(off, questions, 16)
    for (_, a), (_, b) in zip(with_reuse, without, strict=True):
        assert a.generated_ids == b.generated_ids
    moved = stable = 0
    for turn in range(1, len(with_reuse)):
        (plan_before, before), (plan, after) = with_reuse[turn - 1], with_reuse[turn]
        if plan.first_kept != plan_before.first_kept:
            moved += 1  # the prompt no longer starts like any cached one: only a shared head is reused
            earlier = [s.prompt_ids + s.generated_ids for _, s in with_reuse[:turn]]
            shared = max(common_prefix(after.prompt_ids, ids[:-1]) for ids in earlier)
            assert after.reused_tokens == shared < before.prompt_tokens - 100
        else:
            stable += 1
            assert after.reused_tokens >= before.prompt_tokens
    assert moved >= 1 and stable >= 3


def _batch_sizes(bot: ChatBot) -> list[int]:
    """Record the batch size of every decode step of the bot's model (a hook, the forward is real)."""
    sizes = []
    bot.engine.model.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[1] == 1 else None, with_kwargs=True)
    return sizes


@pytest.mark.slow
def test_concurrent_streams_give_the_same_greedy_tokens_as_sequential_ones(tiny_model_dir):
    prompts = ["Hi", QUESTIONS[1] * 3, "What is 2+2?", QUESTIONS[3], "Name a colour.", QUESTIONS[5]]
    lengths = [40, 35, 30, 25, 40, 12]
    one = ChatBot(str(tiny_model_dir), max_tokens=2048, max_batch=1, kv_reuse=False).load()
    expected = [s.generated_ids for s in greedy_streams(one, prompts, lengths, together=False)]

    batched = ChatBot(str(tiny_model_dir), max_tokens=2048, max_batch=8, kv_reuse=False).load()
    sizes = _batch_sizes(batched)
    streams = [batched.generate(batched.plan([], p), greedy(n)) for p, n in zip(prompts, lengths, strict=True)]
    # a sampled stream in the same batch changes nothing for the greedy ones
    sampled = batched.generate(batched.plan([], "Surprise me."), SamplingParams(max_new_tokens=30, temperature=1))
    for stream in streams + [sampled]:
        list(stream)
    assert [s.generated_ids for s in streams] == expected
    assert len(sampled.generated_ids) == 30
    assert max(sizes) == 7 and batched.engine.running == 0


def test_a_cancelled_stream_leaves_the_batch_within_one_step(tiny_model_dir):
    bot = ChatBot(str(tiny_model_dir), max_tokens=4096, max_batch=4, kv_reuse=False).load()
    sizes = _batch_sizes(bot)
    keep = [bot.generate(bot.plan([], q), greedy(60)) for q in QUESTIONS[:2]]
    leaving = bot.generate(bot.plan([], "Go on forever."), greedy(3000))
    for _ in range(3):
        leaving.next_piece(timeout=30)
    deadline = time.monotonic() + 60
    while sizes.count(3) < 2 and time.monotonic() < deadline:  # all three are decoding together
        time.sleep(0.01)
    steps_before = len(sizes)
    leaving.cancel()
    list(leaving)
    assert leaving.finish_reason == "cancelled"
    for stream in keep:
        list(stream)
    # At most the step already under way ran with three rows; from the next one the slot was free.
    assert sizes[steps_before:].count(3) <= 1 and set(sizes[steps_before:]) <= {1, 2, 3}
    assert sizes[-1] in (1, 2) and bot.engine.running == 0

    alone = ChatBot(str(tiny_model_dir), max_tokens=4096, max_batch=1, kv_reuse=False).load()
    for question, stream in zip(QUESTIONS[:2], keep, strict=True):
        reference = alone.generate(alone.plan([], question), greedy(60))
        list(reference)
        assert stream.generated_ids == reference.generated_ids


def test_a_reply_stops_at_the_wall_time_limit(tiny_model_dir):
    bot = ChatBot(str(tiny_model_dir), max_tokens=8192, max_seconds=0.5).load()
    started = time.monotonic()
    stream = bot.generate(bot.plan([], "Go on forever."), greedy(6000))
    list(stream)
    assert stream.finish_reason == "length" and 0 < stream.completion_tokens < 6000
    assert time.monotonic() - started < 5


def test_many_threads_at_once_all_get_their_reply(tiny_model_dir):
    bot = ChatBot(str(tiny_model_dir), max_tokens=2048, max_batch=4, max_waiting=32).load()
    results, errors = {}, []

    def ask(n):
        try:
            stream = bot.generate(bot.plan([], f"Question {n}: {QUESTIONS[n % 6]}"), greedy(10 + n % 7))
            list(stream)
            results[n] = stream
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 20
    assert all(s.finish_reason == "length" and s.completion_tokens == 10 + n % 7 for n, s in results.items())
    assert bot.engine.running == 0 and bot.engine.waiting == 0


def test_cache_settings_come_from_the_environment():
    from webbot import config

    chosen = config.from_env({"WEBBOT_KV_CACHE_MB": "64", "WEBBOT_MAX_BATCH": "3", "WEBBOT_KV_REUSE": "off"})
    assert (chosen["WEBBOT_KV_CACHE_MB"], chosen["WEBBOT_MAX_BATCH"], chosen["WEBBOT_KV_REUSE"]) == (64, 3, False)
    defaults = config.from_env({})
    assert defaults["WEBBOT_KV_CACHE_MB"] is None and defaults["WEBBOT_MAX_BATCH"] is None  # chosen per device
    assert defaults["WEBBOT_KV_REUSE"] and defaults["WEBBOT_CPU_BATCH_MATMUL"]
    with pytest.raises(ValueError, match="WEBBOT_KV_CACHE_MB must be a whole number or auto"):
        config.from_env({"WEBBOT_KV_CACHE_MB": "lots"})
    with pytest.raises(ValueError, match="WEBBOT_KV_REUSE must be one of on, off"):
        config.from_env({"WEBBOT_KV_REUSE": "yes"})


def test_a_failing_prompt_fails_only_its_own_stream(tiny_model_dir):
    bot = ChatBot(str(tiny_model_dir), max_tokens=2048, max_batch=4).load()
    poison = 128100  # a reserved token no text holds: a prompt with it fails its forward pass, as a real failure
    # would (an out-of-vocabulary id once served here; the engine now refuses those at submit, see test_engine.py)

    def fails_on_poison(model, **kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1 and bool((ids == poison).any()):  # a prompt's pass, never a decode step
            raise RuntimeError("injected: this prompt's forward pass fails")
        return model(**kwargs)

    bot.engine.model = ModelStandIn(bot.engine.model, fails_on_poison)
    good = bot.generate(bot.plan([], QUESTIONS[0]), greedy(30))
    bad = bot.engine.submit([128000, 10, poison], greedy(5))
    with pytest.raises(RuntimeError, match="injected"):
        list(bad)
    assert bad.finish_reason == "error"
    list(good)
    assert good.finish_reason == "length" and len(good.generated_ids) == 30
    after = bot.generate(bot.plan([], QUESTIONS[1]), greedy(5))  # the worker is still alive
    list(after)
    assert after.finish_reason == "length"


def test_each_owner_reuses_only_its_own_entries_and_a_public_head_whole():
    from webbot.model.kv_cache import PrefixCache

    cache = PrefixCache(lambda ids: " ".join(map(str, ids)) + " ", budget_bytes=10**6)
    secret = list(range(1, 21))  # tokens 1-5 are the public head (template and server prompt), 6-20 private
    cache.add(secret, fake_kv(19), prompt_len=15, owner="alice", public_len=5)
    assert cache.lookup(secret + [99], "alice", 5)[0] == 19  # the owner: all its tensors cover
    assert cache.lookup(secret + [99], "bob", 5)[0] == 5  # anyone else: the public head, whole
    assert cache.lookup(secret[:7] + [99], "bob", 5)[0] == 5  # whether or not the rest matches
    assert cache.lookup(secret + [99], "bob", 0)[0] == 0  # a private system prompt: nothing shared
    assert cache.lookup([1, 2, 3, 77, 5, 6, 99], "bob", 5)[0] == 0  # a different head: all or nothing
    text = cache.decode(secret)
    assert cache.continuation(text + "21 ", "alice") == (secret, len(text))
    assert cache.continuation(text + "21 ", "bob") is None  # nor are another owner's ids reused to build a prompt
    cache.add(secret + [21, 22], fake_kv(21), prompt_len=21, owner="bob", public_len=5)
    assert {e.owner for e in cache._entries} == {"alice", "bob"}  # bob's longer copy does not push alice's out


def test_over_the_budget_the_owner_holding_most_loses_tensors_first():
    from webbot.model.kv_cache import PrefixCache

    cache = PrefixCache(lambda ids: " ".join(map(str, ids)) + " ", budget_bytes=3 * 1000 * 100)
    cache.add([1, 2, 3] + [0] * 997, fake_kv(1000), prompt_len=1000, owner="alice")
    for n in range(4):  # a flood from one person: 4 sequences of the same size
        cache.add([10 + n] + [0] * 999, fake_kv(1000), prompt_len=1000, owner="mallory")
    held = {(e.owner, e.ids[0]): e.kv is not None for e in cache._entries}
    assert held[("alice", 1)]  # the older entry of someone else stays
    assert sum(held[("mallory", 10 + n)] for n in range(4)) == 2 and not held[("mallory", 10)]
    assert cache.nbytes <= cache.budget
