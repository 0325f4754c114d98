"""KV caches that grow in place (webbot/model/kv_buffer.py): the same numbers as concatenating, written into room
kept at the end, with the real tiny Llama through the engine (issue 23, speed)."""

import torch
from transformers import DynamicCache

from chat_bot import ChatBot
from tests.helpers import QUESTIONS, greedy
from webbot.model.kv_buffer import BufferedLayer, buffered_cache


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
    assert layer._keys.nbytes + layer._values.nbytes == 2 * 2 * 3 * 19 * 4 * 4  # keys and values, capacity counted


def test_an_empty_buffered_cache_takes_a_prompt_in_chunks_without_growing():
    cache = buffered_cache(None, room=6)
    for _ in range(3):  # a 10-token prompt in chunks of 4, 4 and 2: room for what follows the first chunk
        cache.update(torch.ones(1, 2, 4 if cache.get_seq_length() < 8 else 2, 8),
                     torch.ones(1, 2, 4 if cache.get_seq_length() < 8 else 2, 8), 0)
    layer = cache.layers[0]
    assert layer.length == 10 and layer.capacity == 10
    assert layer.keys.untyped_storage().nbytes() == layer.keys.numel() * layer.keys.element_size()  # kept as is


def test_out_of_memory_mid_pass_lets_go_of_kept_caches_and_runs_the_pass_again(tiny_model_dir):
    """Issue 23, item 3: an OOM on a busy GPU failed the whole batch. Now the prefix cache lets go of its kept
    tensors and the pass runs once more from where it started, forgetting what its first try wrote into the
    batch's buffers. The OOM is raised from the second decoder layer (a pre-hook on the real model), after the
    first has written its keys and values: in prefill, and in a decode step of two rows. No GPU here: the error
    is the one torch raises for CUDA."""
    prompts = ["Hi", QUESTIONS[1] * 3]
    bot = ChatBot(str(tiny_model_dir), max_tokens=2048, max_batch=2).load()
    expected = []
    for prompt in prompts:
        stream = bot.generate(bot.plan([], prompt), greedy(30))
        list(stream)
        expected.append(stream.generated_ids)
    assert bot.cache.nbytes > 0  # both replies' caches are kept

    failed, batched = [], []

    def oom_once_in_a_while(module, args):  # args[0]: the hidden states, [rows, tokens, width]
        rows, tokens = args[0].shape[:2]
        batched.append(rows == 2 and tokens == 1)
        second_chunk = tokens > 1 and "prefill" not in failed and module.prefills_seen
        module.prefills_seen += tokens > 1
        if second_chunk or (sum(batched) == 10 and "decode" not in failed):
            failed.append("prefill" if tokens > 1 else "decode")
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    bot.engine.model.model.layers[1].prefills_seen = 0
    bot.engine.prefill_chunk = 16  # a prompt in several chunks: the second of them fails
    hook = bot.engine.model.model.layers[1].register_forward_pre_hook(oom_once_in_a_while)
    streams = [bot.generate(bot.plan([], p), greedy(30), owner="other") for p in prompts]  # nothing to reuse
    for stream in streams:
        list(stream)
    hook.remove()
    bot.close()
    assert [s.generated_ids for s in streams] == expected
    assert failed == ["prefill", "decode"]  # each pass ran once more, and only once
    assert not any(entry.kv for entry in bot.cache._entries if entry.owner == "")  # the kept tensors were let go
