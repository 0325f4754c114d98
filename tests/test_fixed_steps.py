"""Decode steps at fixed shapes over a static pool (webbot/model/fixed_steps.py), the shapes CUDA graphs replay
(issue 23, speed). No GPU here: the steps run without capture, which checks what capture would freeze (rows padded
to a bucket, spans in powers of two, spare slots, the static pool kept between replies) against the engine's own
steps, with the real tiny Llama. Capture itself runs only in bench/gpu_check.py's graphs stage on a GPU."""

import logging
from functools import partial

import pytest

from chat_bot import ChatBot
from tests.helpers import QUESTIONS, greedy, greedy_streams
from webbot.model import fixed_steps
from webbot.model.fixed_steps import FixedSteps, bucket, span_bucket

PROMPTS, LENGTHS = ["Hi", QUESTIONS[1] * 3, QUESTIONS[3]], [40, 25, 33]


def _replies(bot) -> list[list[int]]:
    streams = greedy_streams(bot, PROMPTS, LENGTHS)
    assert all(s.finish_reason == "length" for s in streams)
    return [s.generated_ids for s in streams]


@pytest.fixture(scope="module")
def expected(tiny_model_dir):
    """The three replies decoded together by the engine's own steps (each equals the reply alone: test_kv_pool)."""
    bot = ChatBot(str(tiny_model_dir), max_tokens=2048, max_batch=3, kv_reuse=False).load()
    try:
        return _replies(bot)
    finally:
        bot.close()


def _fixed_bot(tiny_model_dir, capture: bool = False):
    bot = ChatBot(str(tiny_model_dir), max_tokens=2048, max_batch=3, kv_reuse=False).load()
    bot.engine.fixed_steps = partial(FixedSteps.for_model, bot.engine.model, slots=3, tokens=bot.max_tokens,
                                     capture=capture)
    return bot


def test_buckets_round_up_to_the_next_shape_and_stop_at_the_pool():
    assert [bucket(n, fixed_steps.ROW_BUCKETS, 3) for n in (1, 2, 3)] == [1, 2, 3]
    assert [bucket(n, fixed_steps.ROW_BUCKETS, 32) for n in (3, 5, 9, 32)] == [4, 8, 16, 32]
    assert [span_bucket(n, 2049) for n in (1, 256, 257, 1500, 2049)] == [256, 256, 512, 2048, 2049]


def test_fixed_shape_steps_give_the_engines_tokens(tiny_model_dir, expected, monkeypatch):
    """Three replies of different lengths join and end at different times: steps run at 1, 2 and 3 rows, over spans
    of 64, 128 and 256 positions (SPAN_BUCKET lowered to 32 so the spans change within these short replies); every
    token is the engine's own. A second round reuses the same static pool."""
    monkeypatch.setattr(fixed_steps, "SPAN_BUCKET", 32)
    bot = _fixed_bot(tiny_model_dir)
    shapes = []
    bot.engine.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append((kwargs["input_ids"].shape[0], kwargs["attention_mask"].shape[-1],
                                                    max(bot.engine._pool.lengths) + 1))
        if kwargs["input_ids"].shape[1] == 1 else None, with_kwargs=True)
    try:
        assert _replies(bot) == expected
        pool = bot.engine._pool
        assert pool.static and pool.slots == 3 and pool.capacity == 2049
        assert {rows for rows, _, _ in shapes} == {1, 2, 3}  # 3 replies: the pool's 3 slots, not a bucket of 4
        spans = [span for _, span, _ in shapes]
        assert {64, 128, 256} <= set(spans) and all(span >= needed for _, span, needed in shapes)
        assert all(span == span_bucket(needed, 2049) for _, span, needed in shapes)
        assert _replies(bot) == expected and bot.engine._pool is pool  # kept between replies
    finally:
        bot.close()


def test_a_batch_padded_to_a_bucket_gives_the_same_tokens(tiny_model_dir, expected):
    """Four slots for three replies: a step of 3 runs at the bucket of 4, the spare slot writing and reading only
    its first position, and its scores dropped."""
    bot = ChatBot(str(tiny_model_dir), max_tokens=2048, max_batch=4, kv_reuse=False).load()
    bot.engine.fixed_steps = partial(FixedSteps.for_model, bot.engine.model, slots=4, tokens=bot.max_tokens,
                                     capture=False)
    rows = []
    bot.engine.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append((kwargs["input_ids"].shape[0], bot.engine._pool.rows))
        if kwargs["input_ids"].shape[1] == 1 else None, with_kwargs=True)
    try:
        assert _replies(bot) == expected
    finally:
        bot.close()
    assert (4, 3) in rows and all(step == bucket(held, fixed_steps.ROW_BUCKETS, 4) for step, held in rows)


def test_a_capture_that_fails_is_logged_and_its_steps_run_eagerly(tiny_model_dir, expected, caplog):
    """Capture forced on where it cannot work (this CPU build of torch has no CUDA: making the capture's stream
    raises): each shape says so once in the log, and every reply is still whole and the same."""
    bot = _fixed_bot(tiny_model_dir)
    made = bot.engine.fixed_steps

    def capturing(kv):
        steps = made(kv)
        steps.capture = True
        return steps

    bot.engine.fixed_steps = capturing
    try:
        with caplog.at_level(logging.ERROR, logger="webbot.model.fixed_steps"):
            assert _replies(bot) == expected
        graphs = bot.engine._steps.graphs
    finally:
        bot.close()
    failures = [r for r in caplog.records if "capturing a CUDA graph" in r.getMessage()]
    assert graphs and all(value is None for value in graphs.values()) and len(failures) == len(graphs)


def test_cuda_graphs_asked_for_on_cpu_say_so_and_decode_without_them(tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="chat_bot"):
        bot = ChatBot(str(tiny_model_dir), max_tokens=1024, kv_reuse=False, cuda_graphs=True).load()
    try:
        assert bot.engine.fixed_steps is None
        assert any("CUDA graphs need a CUDA GPU" in r.getMessage() for r in caplog.records)
        stream = bot.generate(bot.plan([], "Hi"), greedy(5))
        list(stream)
        assert len(stream.generated_ids) == 5
    finally:
        bot.close()


def test_a_static_pool_batches_only_as_many_replies_as_half_the_free_gpu_memory_holds():
    """The static pool is allocated whole when decoding starts: on a small card (the original RTX 3080's 10 GB,
    7.5 GB free after Llama-3.2-1B's weights) 32 replies of 8,192 tokens (8.6 GB in bf16) would run out of memory
    at the first reply. Arithmetic only: no GPU here."""
    gib, per_token = 1024**3, 32 * 1024  # Llama-3.2-1B in bf16: 16 layers x 8 heads x 64 dims x 2 x 2 bytes
    assert fixed_steps.static_slots(int(7.5 * gib), 8192, per_token, 32) == 14  # 3.75 GB of 8,193-token slots
    assert fixed_steps.static_slots(100 * gib, 8192, per_token, 32) == 32  # an H100: the batch as set
    assert fixed_steps.static_slots(gib // 8, 8192, per_token, 32) == 0  # not one: no graphs (said in the log)
