"""Loading a model: where a model id points (hub id, directory, `.gguf` file), which device and dtype to
use, its tokenizer and chat template (shared by the local model and the remote backend, which loads only
the tokenizer), the ids that end a reply, and the KV cache budget when none is set. No Flask here.
"""

import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from webbot.config import KV_CACHE_GPU_SHARE, KV_CACHE_MB_CPU, KV_DISK_MB_MOST, KV_DISK_SHARE

log = logging.getLogger(__name__)

# Tokens that end a turn in common chat templates; used beside the model's own eos ids.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "<|im_end|>", "<|endoftext|>",
                      "<end_of_turn>", "<|end|>", "</s>")
LOAD_HEARTBEAT_S = 10


def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """Pick the device and dtype: CUDA with bf16 when there is a GPU (fp16 where it has no native bf16); on CPU,
    fp32.

    On CPU, fp32 prefill is measured 5x faster than bf16 on an AVX2 machine without native
    bf16 (docs/benchmarks.md, the dtype table), at twice the memory.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        if device.startswith("cuda"):  # fp16 on cards without native bf16 (T4, V100); non-numbers are never sampled
            dtype = "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"
        else:
            dtype = "float32"
    return device, dtype


def split_gguf(model: str) -> tuple[str, str | None]:
    """A local `.gguf` path becomes (its directory, its file name); anything else is unchanged."""
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return str(path.parent), path.name
    return model, None


def model_source(model_id: str) -> tuple[str, dict]:
    """(what from_pretrained reads, the extra arguments a `.gguf` file needs)."""
    source, gguf_file = split_gguf(model_id)
    return source, ({"gguf_file": gguf_file} if gguf_file else {})


def load_tokenizer(model_id: str, advice: str = "use an instruction-tuned model"):
    """The tokenizer of `model_id`, which must have a chat template (else ValueError ending with `advice`)."""
    from transformers import AutoTokenizer

    source, extra = model_source(model_id)
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{model_id} has no chat template; {advice}")
    return tokenizer


@contextmanager
def progress_in_log(what: str):
    """Log `still loading WHAT (N s so far)` every LOAD_HEARTBEAT_S until the block ends."""
    started, done = time.monotonic(), threading.Event()

    def heartbeat():
        while not done.wait(LOAD_HEARTBEAT_S):
            log.info("still loading %s (%.0f s so far)", what, time.monotonic() - started)

    threading.Thread(target=heartbeat, daemon=True, name="load-heartbeat").start()
    try:
        yield
    finally:
        done.set()


def default_kv_cache_mb(device: str, batch_bytes: int = 0, copies: int = 2) -> int:
    """The KV cache budget when none is set: KV_CACHE_MB_CPU on CPU. On CUDA, a share of the GPU's memory, but
    never more than is free now (after the weights, and whatever else runs on the card) less `copies` of the
    largest batch's KV cache, `batch_bytes` (growing the batch's pool holds two copies for a moment; a static pool,
    allocated once, one)."""
    if device.startswith("cuda"):
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        budget = min(total * KV_CACHE_GPU_SHARE, max(0, gpu_free_bytes(device) - copies * batch_bytes))
        return int(budget / (1024 * 1024))
    return KV_CACHE_MB_CPU


def gpu_free_bytes(device: str) -> int:
    """Bytes free on a CUDA device now (after the weights, and whatever else runs on the card)."""
    return torch.cuda.mem_get_info(torch.device(device))[0]


def kv_bytes_per_token(model, dtype: str) -> int:
    """Bytes of keys and values one token takes in the model's KV cache (all layers), computed in `dtype`."""
    config = model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * 2 * heads * head_dim * getattr(torch, dtype).itemsize


def default_kv_disk_mb(directory: Path) -> int:
    """The disk tier's budget when none is set: KV_DISK_SHARE of the free space where it lives, at most
    KV_DISK_MB_MOST."""
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    return int(min(KV_DISK_MB_MOST, shutil.disk_usage(directory).free * KV_DISK_SHARE / 2**20))


def kv_layout(model, tokenizer, model_id: str, dtype: str, device: str, weight_major: bool, quant: str) -> dict:
    """What a kept KV cache depends on: the model (id and config), its dtype and device kind, the tokenizer and
    chat template, the library that laid the cache out, and how the linear layers were computed (and held)."""
    import hashlib

    import transformers

    template = getattr(tokenizer, "chat_template", "") or ""
    return {"model": model_id, "config": hashlib.sha256(model.config.to_json_string().encode()).hexdigest(),
            "dtype": dtype, "device": "cuda" if device.startswith("cuda") else "cpu",
            "tokenizer": hashlib.sha256((template + str(len(tokenizer)) + str(tokenizer.all_special_ids)).encode()
                                        ).hexdigest(),
            "transformers": transformers.__version__, "weight_major_linear": weight_major, "quant": quant}


def end_of_turn_ids(model, tokenizer) -> list[int]:
    """Token ids that end a reply: the model's eos ids plus known end-of-turn tokens it has."""
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.append(value)
        elif value:
            ids.extend(value)
    vocab = tokenizer.get_vocab()
    ids.extend(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
    return list(dict.fromkeys(ids))
