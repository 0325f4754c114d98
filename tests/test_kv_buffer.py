"""KV caches that grow in place (webbot/model/kv_buffer.py): the same numbers as concatenating, written into room
kept at the end, with the real tiny Llama through the engine (issue 23, speed)."""

import torch
from transformers import DynamicCache

from chat_bot import ChatBot
from tests.helpers import QUESTIONS, greedy
from webbot.model.kv_buffer import GROWTH_ROOM, BufferedLayer, buffered_cache, cache_nbytes


def test_a_buffered_layer_holds_what_concatenation_holds_and_copies_only_when_full():
    torch.manual_seed(0)
    start = [(torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4))]
    buffered = buffered_cache(start, room=4)
    dynamic = DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in start])
    layer = buffered.layers[0]
    assert isinstance(layer, BufferedLayer) and layer.capacity == 9 and buffered.get_seq_length() == 5
    buffers = []
    for _ in range(12):
        k, v = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
        keys, values = buffered.update(k, v, 0)
        expected_keys, expected_values = dynamic.update(k, v, 0)
        assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)
        buffers.append(keys.untyped_storage().data_ptr())
    # 5 + 4 tokens fit the first buffers; the 10th grows them to 14 (4 tokens of room after it), the 15th to 19
    assert len(set(buffers[:4])) == 1 and len(set(buffers[4:9])) == 1 and len(set(buffers)) == 3
    assert buffered.get_seq_length() == 17 and layer.capacity == 19
    assert cache_nbytes(buffered) == 2 * 2 * 3 * 19 * 4 * 4  # keys and values, capacity counted


def test_an_empty_buffered_cache_takes_a_prompt_in_chunks_without_growing():
    cache = buffered_cache(None, room=6)
    for _ in range(3):  # a 10-token prompt in chunks of 4, 4 and 2: room for what follows the first chunk
        cache.update(torch.ones(1, 2, 4 if cache.get_seq_length() < 8 else 2, 8),
                     torch.ones(1, 2, 4 if cache.get_seq_length() < 8 else 2, 8), 0)
    layer = cache.layers[0]
    assert layer.length == 10 and layer.capacity == 10
    assert layer.keys.untyped_storage().nbytes() == layer.keys.numel() * layer.keys.element_size()  # kept as is


def test_buffers_that_grow_while_a_padded_batch_decodes_change_no_token(tiny_model_dir):
    """Two prompts of different lengths (so the batch is padded and masked) decode together twice: with room for
    the whole reply, and with 8 tokens of room, so the batch's KV buffers and mask grow about every 8 steps. The
    greedy tokens are the same, and the buffers moved only when they grew, not at every step. (Each row alone
    against the batch is test_kv_reuse's: a random-weight model's near-ties differ after ~140 tokens.)"""
    prompts = ["Hi", QUESTIONS[1] * 3]
    bot = ChatBot(str(tiny_model_dir), max_tokens=2048, max_batch=2, kv_reuse=False).load()
    engine, buffers, masks = bot.engine, [], []

    def watch(module, args, kwargs):
        if kwargs["input_ids"].shape == (2, 1):
            buffers.append(engine._batch.layers[0]._keys.untyped_storage().data_ptr())
            masks.append(kwargs["attention_mask"].shape[1])

    engine.model.register_forward_pre_hook(watch, with_kwargs=True)
    replies = {}
    for room in (GROWTH_ROOM, 8):
        engine.growth_room = room
        buffers.clear(), masks.clear()
        streams = [bot.generate(bot.plan([], p), greedy(80)) for p in prompts]
        for stream in streams:
            list(stream)
        replies[room] = [s.generated_ids for s in streams]
        assert all(len(ids) == 80 for ids in replies[room])
        # the mask grows by one token a step; a grown buffer is a new one
        assert len(masks) >= 70 and all(b - a == 1 for a, b in zip(masks, masks[1:], strict=False))
        moves = sum(before != after for before, after in zip(buffers, buffers[1:], strict=False))
        assert (moves == 0) if room == GROWTH_ROOM else (len(masks) // 8 - 1 <= moves <= len(masks) // 8 + 1)
    bot.close()
    assert replies[8] == replies[GROWTH_ROOM]
