"""int8 weights on CPU (WEBBOT_QUANT): the products against their dequantised reference, the real SmolLM2 against
its fp32 self, and the setting through a real server.

The figures the issue sets (speed, memory, agreement over 20 prompts x 64 tokens, perplexity) are measured by
`bench/bench_quant.py`, never timed here; these tests check that the int8 model computes what its weights say
and stays close to fp32 on a real model.
"""

import math
import threading
from pathlib import Path

import pytest
import requests
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from webbot.config import from_env
from webbot.model import quant
from webbot.model.quant import Int8Embedding, Int8Linear, quantise_int8, resolve_quant

PROMPTS = ("What is the capital of France?", "Write a short poem about the sea.", "Why is the sky blue?")


def test_auto_is_int8_on_cpu_and_none_on_cuda_and_bad_values_say_what_to_use():
    assert resolve_quant("auto", "cpu") == "int8" and resolve_quant("auto", "cuda:0") == "none"
    assert resolve_quant("none", "cpu") == "none" and resolve_quant("int8", "cpu") == "int8"
    with pytest.raises(ValueError, match="for CPU decoding; on a GPU use none"):
        resolve_quant("int8", "cuda")
    with pytest.raises(ValueError, match="WEBBOT_QUANT must be one of auto, none, int8, not 'int4'"):
        from_env({"WEBBOT_QUANT": "int4"})
    assert from_env({})["WEBBOT_QUANT"] == "auto"


@pytest.mark.parametrize("rows", [1, 3, quant.DECODE_ROWS, quant.DECODE_ROWS + 1, 300])
def test_both_products_compute_the_dequantised_weights(rows):
    """Few rows go through the int8 kernel, many through dequantised blocks: both give the product of the
    dequantised weights (up to the bf16 rounding of what goes in and out), on an odd width that does not fill
    the last block."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, quant.DEQUANT_BLOCK + 37, bias=True)
    layer = Int8Linear.from_linear(linear)
    assert layer.qweight.dtype == torch.int8 and layer.qweight.abs().max() == 127
    x = torch.randn(2, rows, 96)
    reference = x @ (layer.qweight.float() * layer.scales[:, None]).t() + linear.bias
    out = layer(x)
    assert out.shape == (2, rows, quant.DEQUANT_BLOCK + 37) and out.dtype == torch.float32
    assert torch.allclose(out, reference, atol=0.02, rtol=0.02), (out - reference).abs().max()
    error = (out - linear(x)).abs().max() / linear(x).abs().max()  # and the weights' rounding is small
    assert error < 0.03, error


def test_a_prompt_read_whole_or_in_pieces_gives_the_same_numbers():
    """The two products agree, so a KV cache built token by token (the int8 kernel) serves a prompt that is
    otherwise read in one chunk (dequantised blocks): the same rows, both ways, differ by at most one bf16 step
    in a rare element (the two sum in different orders before rounding)."""
    torch.manual_seed(2)
    layer = Int8Linear.from_linear(torch.nn.Linear(256, 640))
    x = torch.randn(quant.DECODE_ROWS * 3, 256)
    whole = layer(x)  # one call: dequantised blocks
    pieces = torch.cat([layer(x[i:i + 4]) for i in range(0, len(x), 4)])  # four rows at a time: the kernel
    step = whole.abs() / 128  # one bf16 step of each element, at most
    differ = (whole - pieces).abs() > 0
    assert ((whole - pieces).abs() <= step + 1e-6).all() and differ.float().mean() < 0.01, differ.float().mean()


def test_the_dequantised_product_is_the_same_through_its_scratch_buffers_in_any_order_and_thread():
    """Many rows go through per-thread scratch buffers (no fresh tensor per block): layers of other shapes in
    between, and the same layer on another thread at the same time, give exactly the numbers of blocks made anew."""
    torch.manual_seed(3)
    small, large = (Int8Linear.from_linear(torch.nn.Linear(i, o)) for i, o in ((64, 700), (320, 1100)))

    def fresh(layer, x):  # the product as it was written before the buffers
        rows = x.to(torch.bfloat16).float()
        blocks = [(layer.qweight[s:s + quant.DEQUANT_BLOCK].float() * layer.scales[s:s + quant.DEQUANT_BLOCK, None])
                  @ rows.t() for s in range(0, layer.out_features, quant.DEQUANT_BLOCK)]
        return (torch.cat(blocks).t().to(torch.bfloat16).float() + layer.bias)

    inputs = {layer: torch.randn(quant.DECODE_ROWS * 2, layer.in_features) for layer in (small, large)}
    quant._SCRATCH.__dict__.pop("buffers", None)  # this thread's buffers are made below, first in inference mode
    with torch.inference_mode():  # as the engine runs; the buffers made here serve calls outside it too
        assert torch.equal(large(inputs[large]), fresh(large, inputs[large]))
    for layer in (large, small, large, small):
        assert torch.equal(layer(inputs[layer]), fresh(layer, inputs[layer]))
    results = {}
    threads = [threading.Thread(target=lambda name=name, layer=layer: results.__setitem__(
        name, [layer(inputs[layer]) for _ in range(20)])) for name, layer in (("small", small), ("large", large))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(out, fresh(small, inputs[small])) for out in results["small"])
    assert all(torch.equal(out, fresh(large, inputs[large])) for out in results["large"])


def test_one_row_of_a_batch_does_not_depend_on_the_others():
    """Weights-only: activations are never quantised together, so a row's result is the same in any batch."""
    torch.manual_seed(1)
    layer = Int8Linear.from_linear(torch.nn.Linear(64, 128))
    rows = torch.randn(4, 64)
    alone = layer(rows[:1])
    with_others = layer(torch.cat([rows[:1], rows[1:] * 1000]))
    assert torch.equal(alone[0], with_others[0])


@pytest.fixture(scope="module")
def smollm2_pair(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    reference = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    done = quantise_int8(model)
    return tokenizer, reference, model, done


def test_every_linear_layer_and_the_tied_embeddings_become_one_int8_copy(smollm2_pair):
    _, reference, model, done = smollm2_pair
    linears = sum(isinstance(m, torch.nn.Linear) for m in reference.modules())
    assert done["linear"] == linears and not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert done["embedding"] == "shared"  # SmolLM2 ties its head to its embeddings: one int8 matrix for both
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, Int8Embedding) and embeddings.qweight is model.lm_head.qweight
    fp32_bytes = sum(p.numel() * 4 for p in reference.parameters())
    int8_bytes = sum(b.numel() * b.element_size() for b in model.buffers() if b.dtype in (torch.int8,))
    assert int8_bytes < fp32_bytes / 3.5  # the weights are held once, in int8 (norms stay fp32)
    ids = torch.tensor([[1, 500, 49000]])
    rounding = embeddings(ids) - reference.get_input_embeddings()(ids)  # at most half a step of each row's scale
    assert (rounding.abs() <= embeddings.scales[ids].unsqueeze(-1) / 2 + 1e-7).all()


@torch.inference_mode()
def test_greedy_tokens_agree_with_fp32_on_the_real_model(smollm2_pair):
    """Teacher-forced on fp32's own greedy reply, one token at a time through the KV cache (the decode path):
    the int8 model picks the same next token almost everywhere. bench/bench_quant.py measures 20 prompts x 64
    tokens; here 3 x 24, with room for a 135M model's near ties."""
    tokenizer, reference, model, _ = smollm2_pair
    hits = total = 0
    for prompt in PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        wanted = reference.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False)[0, ids.shape[1]:]
        out = model(ids, use_cache=True)
        for step, token in enumerate(wanted.tolist()):
            hits += int(out.logits[0, -1].argmax()) == token
            total += 1
            out = model(wanted[step:step + 1][None], past_key_values=out.past_key_values, use_cache=True)
    assert hits / total >= 0.9, f"{hits}/{total}"


@torch.inference_mode()
def test_perplexity_stays_within_two_percent_of_fp32(smollm2_pair):
    """A whole passage at once (the prefill path, dequantised blocks) on a text the model has not seen."""
    tokenizer, reference, model, _ = smollm2_pair
    text = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :512]
    assert ids.shape[1] > 100

    def perplexity(m):
        return math.exp(m(ids, labels=ids).loss.item())

    assert perplexity(model) <= perplexity(reference) * 1.02


@pytest.mark.slow
def test_a_server_started_with_none_keeps_the_models_dtype(start_server, tiny_model_dir):
    """A real server with `WEBBOT_QUANT=none` says so and holds no int8 layer (the default's int8 is reported in
    test_app.py, and its server answers Paris on SmolLM2 in test_smollm2.py)."""
    server = start_server(tiny_model_dir, WEBBOT_QUANT="none")
    health = requests.get(server.url + "/healthz", timeout=10).json()
    assert health["checks"]["model"] == {"status": "ok", "model": "tiny-llama", "device": "cpu", "dtype": "float32",
                                         "quant": "none"}
    reply = requests.post(server.url + "/v1/chat/completions", timeout=120, json={
        "model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}).json()
    assert reply["usage"]["completion_tokens"] == 4
    log = server.log_path.read_text()
    assert "int8 weights for decoding" not in log and "linear layers computed weight-major" in log


@torch.inference_mode()
def test_a_bf16_model_is_quantised_from_its_own_dtype_to_the_same_numbers(tiny_model_dir, tmp_path):
    """The server reads bf16 files as bf16 for int8 (a peak of about half the fp32 load's, bench_quant), and
    must compute exactly what quantising the fp32-loaded model gives."""
    import shutil

    from chat_bot import ChatBot

    stored = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(stored)
    for name in Path(tiny_model_dir).iterdir():
        if name.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(name, stored / name.name)
    reference = AutoModelForCausalLM.from_pretrained(stored, dtype=torch.float32).eval()
    quantise_int8(reference)  # the earlier way: the whole model in fp32 first
    served = ChatBot(str(stored), device="cpu", dtype="float32", quant="int8", max_tokens=512).load()
    model = served.engine.model
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {b.dtype for n, b in model.named_buffers() if n.endswith("inv_freq")} == {torch.float32}
    assert model.lm_head.scales_bf16.dtype == torch.bfloat16 and model.lm_head.dtype == torch.float32
    ids = torch.tensor([[1, 450, 7483, 310, 3444, 338, 278, 4272, 29889] * 24])  # 216 rows: the prefill product
    for rows in (ids, ids[:, :8]):  # and a few: the int8 kernel
        assert torch.equal(model(rows).logits, reference(rows).logits)
    served.close()
