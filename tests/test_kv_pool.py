"""The decoding batch's pool of slots (webbot/model/kv_pool.py): each reply writes at its own length, the same
numbers as concatenating each reply's cache alone; replies join and leave without moving the others (issue 23,
speed). Unit checks on random tensors, then the real tiny Llama through the engine."""

from functools import partial

import pytest
import torch
from transformers import DynamicCache

from chat_bot import ChatBot
from tests.helpers import QUESTIONS, greedy, greedy_streams
from webbot.model.fixed_steps import FixedSteps
from webbot.model.kv_buffer import GROWTH_ROOM
from webbot.model.kv_pool import PoolFull, SlotPool


def _reply(length: int, seed: int) -> list[tuple]:
    """One reply's per-layer keys and values: 2 layers, 3 heads, `length` tokens, 4 dims."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 3, length, 4, generator=generator), torch.randn(1, 3, length, 4, generator=generator))
            for _ in range(2)]


def _step(pool: SlotPool, generator) -> list[tuple]:
    """One decode step's new keys and values for every row, written through the pool's layers as attention does;
    returns them per layer."""
    cache, mask, positions = pool.prepare()
    assert positions[:, 0].tolist() == pool.lengths and mask.shape == (pool.rows, 1, 1, max(pool.lengths) + 1)
    new = []
    for layer in range(2):
        k, v = (torch.randn(pool.rows, 3, 1, 4, generator=generator) for _ in range(2))
        keys, values = cache.update(k, v, layer)
        assert keys.shape == (pool.rows, 3, max(pool.lengths) + 1, 4)
        new.append((k, v))
    pool.advance()
    return new


def test_rows_of_different_lengths_hold_what_concatenating_each_alone_holds():
    generator = torch.Generator().manual_seed(1)
    lengths = [5, 2, 9]
    alone = [DynamicCache(ddp_cache_data=_reply(n, i)) for i, n in enumerate(lengths)]
    pool = SlotPool.like(_reply(1, 0), room=4)
    assert [pool.add(_reply(n, i)) for i, n in enumerate(lengths)] == [0, 1, 2]
    for _ in range(7):  # 9 + 1 tokens fit 9 + 1 + 4 of capacity: it grows once on the way
        for layer, (k, v) in enumerate(_step(pool, generator)):
            for row, cache in enumerate(alone):
                cache.update(k[row:row + 1], v[row:row + 1], layer)
        _, mask, _ = pool.prepare()  # (marks the next positions; nothing is written until a step runs)
        for row in range(len(alone)):
            # a row attends exactly to its own tokens and the one about to be written
            assert mask[row, 0, 0].tolist() == [True] * (pool.lengths[row] + 1) + [False] * (
                mask.shape[-1] - pool.lengths[row] - 1)
    for row, cache in enumerate(alone):
        for (keys, values), layer in zip(pool.view(row), cache.layers, strict=True):
            assert torch.equal(keys, layer.keys) and torch.equal(values, layer.values)
    assert pool.lengths == [12, 9, 16] and pool.capacity == 9 + 1 + 4 + 1 + 4


def test_a_row_that_leaves_hands_its_slot_to_the_last_and_a_pool_shrinks_when_mostly_empty():
    pool = SlotPool.like(_reply(1, 0), room=2)
    replies = {n: _reply(n, n) for n in (40, 3, 6, 4)}
    for kv in replies.values():
        pool.add(kv)
    assert pool.slots == 4 and pool.capacity == 43
    buffer = pool.keys[0].data_ptr()
    pool.remove(2)  # the 6-token reply leaves: the 4-token one moves into its slot, nothing else moves
    assert pool.lengths == [40, 3, 4] and pool.keys[0].data_ptr() == buffer
    assert torch.equal(pool.view(2)[1][0], replies[4][1][0])
    pool.remove(0)  # the long one leaves: what is left fits in a tenth of the capacity, so the pool shrinks
    assert pool.lengths == [4, 3] and pool.capacity == 4 + 1 + 2 and pool.slots == 4
    assert pool.keys[0].data_ptr() != buffer
    for slot, n in enumerate((4, 3)):
        for (keys, values), (k, v) in zip(pool.view(slot), replies[n], strict=True):
            assert torch.equal(keys, k) and torch.equal(values, v)
    assert pool.high_water == 2 and pool.nbytes == 2 * 2 * 2 * 3 * 7 * 4 * 4  # 2 layers x 2 slots written
    pool.remove(1)
    assert pool.lengths == [4] and pool.capacity == 7 and pool.high_water == 2  # one of two: not worth a copy


def test_a_static_pool_never_changes_shape_and_masks_its_spare_slots():
    """The shapes a captured CUDA graph needs: a step over 4 slots with 2 replies, every one attending over the whole
    capacity; the spare slots attend to their first position only (a row attending to nothing gives NaN)."""
    pool = SlotPool.like(_reply(1, 0), slots=4, capacity=16, static=True)
    pool.add(_reply(3, 1)), pool.add(_reply(5, 2))
    cache, mask, positions = pool.prepare(step_rows=4, span=16)
    assert mask.shape == (4, 1, 1, 16) and positions[:, 0].tolist() == [3, 5, 0, 0]
    assert mask[:, 0, 0].sum(-1).tolist() == [4, 6, 1, 1]
    keys, _ = cache.update(torch.ones(4, 3, 1, 4), torch.ones(4, 3, 1, 4), 0)
    assert keys.shape == (4, 3, 16, 4) and keys[0, :, 3].eq(1).all() and keys[1, :, 5].eq(1).all()
    try:
        pool.add(_reply(16, 3))
    except PoolFull as error:
        assert "16 tokens" not in str(error) and "up to 15 tokens" in str(error)
    else:
        raise AssertionError("a reply longer than a static pool was taken")


def test_replies_joining_and_leaving_never_move_the_others_and_change_no_token(tiny_model_dir):
    """Three prompts of different lengths decode together (one row each at its own length, no padding) with room
    for the whole reply, then with 8 tokens of room so the pool grows about every 8 steps; they end at different
    times. The greedy tokens are the same both times and the same as each reply alone, and the pool's buffers
    moved only when they grew, never when a reply joined or left."""
    prompts, lengths = ["Hi", QUESTIONS[1] * 3, QUESTIONS[3]], [40, 25, 33]
    alone = ChatBot(str(tiny_model_dir), max_tokens=2048, max_batch=1, kv_reuse=False).load()
    expected = [s.generated_ids for s in greedy_streams(alone, prompts, lengths, together=False)]
    alone.close()

    bot = ChatBot(str(tiny_model_dir), max_tokens=2048, max_batch=3, kv_reuse=False).load()
    engine, steps = bot.engine, []

    def watch(module, args, kwargs):
        if kwargs["input_ids"].shape[1] == 1:
            pool = engine._pool
            steps.append((pool.rows, pool.keys[0].data_ptr(), (pool.slots, pool.capacity)))
            assert kwargs["attention_mask"].shape[-1] == max(pool.lengths) + 1 <= pool.capacity

    engine.model.register_forward_pre_hook(watch, with_kwargs=True)
    for room in (GROWTH_ROOM, 8):
        engine.growth_room = room
        steps.clear()
        assert [s.generated_ids for s in greedy_streams(bot, prompts, lengths)] == expected
        assert sum(step[0] == 3 for step in steps) >= 20  # the three decoded together for most of the shortest
        pairs = list(zip(steps, steps[1:], strict=False))
        # a new buffer only when the pool changed shape (grew for a reply or a token, or shrank)...
        assert all(a[2] != b[2] for a, b in pairs if a[1] != b[1])
        # ...and a reply leaving moved nothing: the 25-token one left 3 rows to 2 in the same buffers
        assert any(b[0] < a[0] and a[1] == b[1] for a, b in pairs)
        moves = sum(a[1] != b[1] for a, b in pairs)
        # with room for every reply the buffers never moved: the engine's pool has a slot for each reply it batches
        assert moves == 0 if room == GROWTH_ROOM else moves >= 2  # 8 tokens of room: the longest grows it
    bot.close()


def test_on_cpu_slots_no_reply_has_written_take_no_memory():
    """The engine's CPU pool has a slot for every reply it may batch (8), so that a reply joining never copies the
    others: that is only affordable because the system hands out a large buffer's memory as it is first written.
    One reply in a pool of 8 slots x 16,384 tokens (2 GB of keys and values if all were there) adds about one
    slot's worth to the process's resident memory."""
    def resident() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096

    reply = [(torch.ones(1, 8, 16000, 64), torch.ones(1, 8, 16000, 64)) for _ in range(2)]  # 2 layers, 65 MB each
    slot_bytes = 2 * 2 * 8 * 16384 * 64 * 4
    before = resident()
    pool = SlotPool.like(reply, slots=8, capacity=16384)
    pool.add(reply)
    grown = resident() - before
    assert pool.nbytes == slot_bytes  # one slot written, as the engine's memory gauge counts it
    assert 0.8 * slot_bytes < grown < 2 * slot_bytes, grown / slot_bytes


@pytest.fixture(scope="module")
def sliding_model_dir(tmp_path_factory):
    """A 2-layer random-weight Qwen2 whose second layer attends only 16 tokens back (as Gemma's and Mistral's
    sliding layers do), with the real Llama 3.2 tokenizer and template; made here, nothing downloaded."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from harness import assets

    config = Qwen2Config(vocab_size=128256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=16,
                         max_window_layers=1, bos_token_id=128000, eos_token_id=assets.LLAMA3_EOS_IDS,
                         tie_word_embeddings=True, initializer_range=0.5)
    assert config.layer_types == ["full_attention", "sliding_attention"]
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("sliding")
    Qwen2ForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(assets.llama32_tokenizer_dir()).save_pretrained(out)
    return out


@pytest.mark.parametrize("steps", ["engine", "fixed shapes"])
def test_a_sliding_window_models_replies_equal_generate(sliding_model_dir, steps):
    """Decode steps pass the pool's mask to the model as it is, so the sliding layers get their own: without it they
    attended to the whole context once a reply passed 16 tokens. Two replies batched together, each equal to
    transformers' generate (whose cache keeps only the window for those layers); with the engine's steps and with
    the fixed-shape steps CUDA graphs replay (here without capture)."""
    bot = ChatBot(str(sliding_model_dir), max_tokens=2048, max_batch=2, kv_reuse=False).load()
    if steps == "fixed shapes":
        bot.engine.fixed_steps = partial(FixedSteps.for_model, bot.engine.model, slots=2, tokens=bot.max_tokens,
                                         capture=False)
    try:
        plans = [bot.plan([], p) for p in ("Hi", QUESTIONS[1])]
        streams = [bot.generate(plan, greedy(30)) for plan in plans]
        for stream in streams:
            list(stream)
        model = bot.engine.model
        for plan, stream in zip(plans, streams, strict=True):
            with torch.inference_mode():
                out = model.generate(torch.tensor([plan.prompt_ids]), max_new_tokens=30, do_sample=False,
                                     eos_token_id=bot.engine.eos_ids, pad_token_id=bot.engine.pad_id)
            assert stream.generated_ids == out[0, len(plan.prompt_ids):].tolist()
    finally:
        bot.close()
