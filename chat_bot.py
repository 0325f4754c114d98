"""ChatBot: one instruction-tuned LLM and its tokenizer, loaded once, answering with memory.

Loads any causal LM from a hub id, a local directory or a `.gguf` file; builds prompts
with the tokenizer's own chat template and trims them to the context (`memory.py`);
streams replies through a single generation engine (`engine.py`) that batches concurrent
replies and reuses the KV cache of earlier turns (`kv_cache.py`). No Flask imports, and
nothing heavy happens until `load()`.

A conversation's next prompt is built from the exact token ids of the previous prompt and
reply when its text continues them (re-tokenising a reply's text need not give back the
ids the model generated), so the cached prefix matches token for token.
"""

import logging
import threading
import time
from pathlib import Path

from webbot.model.cpu_linear import SMALL_BATCH_DTYPES, use_weight_major_linear
from webbot.model.engine import (
    MAX_BATCH,
    MAX_REPLY_SECONDS,
    MAX_WAITING,
    PREFILL_CHUNK,
    Engine,
    SamplingParams,
    Stream,
)
from webbot.model.kv_cache import PrefixCache
from webbot.model.memory import Memory, MemoryPlan, PlansReplies
from webbot.model.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_MODEL = "unsloth/Llama-3.2-1B-Instruct"
DEFAULT_SYSTEM_PROMPT = "You are a helpful, concise assistant. Answer in Markdown when it helps."
# Tokens that end a turn in common chat templates; used beside the model's own eos ids.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "<|im_end|>", "<|endoftext|>",
                      "<end_of_turn>", "<|end|>", "</s>")
LOAD_HEARTBEAT_S = 10
KV_CACHE_MB_CPU = 2048  # default budget of cached KV on CPU; on CUDA a share of the GPU's memory
KV_CACHE_GPU_SHARE = 0.25


def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """Pick the device and dtype: CUDA with bf16 when there is a GPU; on CPU, fp32.

    On CPU, fp32 is measured 5x faster than bf16 for prefill on an AVX2 machine without
    native bf16 (DESIGN.md section 4), at twice the memory.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return device, dtype


def split_gguf(model: str) -> tuple[str, str | None]:
    """A local `.gguf` path becomes (its directory, its file name); anything else is unchanged."""
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return str(path.parent), path.name
    return model, None


class ChatBot(PlansReplies):
    """Holds the model and answers conversations; call `load()` once before use."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto",
                 max_tokens: int = 8192, memory_ratio: float = 0.25,
                 system_prompt: str = DEFAULT_SYSTEM_PROMPT, max_waiting: int = MAX_WAITING,
                 max_batch: int | None = None, kv_cache_mb: float | None = None, kv_reuse: bool = True,
                 max_seconds: float = MAX_REPLY_SECONDS, cpu_batch_matmul: bool = True, metrics=None):
        self.model_id = model
        self.max_waiting, self.max_batch, self.max_seconds = max_waiting, max_batch, max_seconds
        self.kv_cache_mb, self.kv_reuse = kv_cache_mb, kv_reuse
        self.cpu_batch_matmul = cpu_batch_matmul
        self.metrics = metrics or Metrics()  # counters of this bot's engine, served at /metrics
        self.metrics.watch(self)
        self.requested = (device, dtype)
        self.max_tokens = max_tokens
        self.memory_ratio = memory_ratio
        self.system_prompt = system_prompt
        self.device = self.dtype = None
        self.memory: Memory | None = None
        self.cache: PrefixCache | None = None
        self.engine: Engine | None = None
        self.error: str | None = None
        self._loaded = threading.Event()

    @property
    def ready(self) -> bool:
        """True once the model is loaded and can answer."""
        return self._loaded.is_set()

    @property
    def name(self) -> str:
        """The id clients see: the hub id, or the directory or file name of a local model."""
        path = Path(self.model_id)
        return path.name if path.exists() else self.model_id

    def load(self) -> "ChatBot":
        """Load tokenizer and model (downloading them if needed); logs progress while it works."""
        if self.ready:
            return self
        started = time.monotonic()
        done = threading.Event()

        def heartbeat():
            while not done.wait(LOAD_HEARTBEAT_S):
                log.info("still loading %s (%.0f s so far)", self.model_id, time.monotonic() - started)

        threading.Thread(target=heartbeat, daemon=True, name="load-heartbeat").start()
        try:
            self._load()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("could not load model %s", self.model_id)
            raise
        finally:
            done.set()
        log.info("model %s ready on %s (%s) in %.1f s; context %d tokens, prompt budget %d",
                 self.model_id, self.device, self.dtype, time.monotonic() - started,
                 self.max_tokens, self.memory.budget)
        return self

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device, self.dtype = resolve_device_dtype(*self.requested)
        source, gguf_file = split_gguf(self.model_id)
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        log.info("loading %s on %s (%s)", self.model_id, self.device, self.dtype)
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{self.model_id} has no chat template; use an instruction-tuned model")
        # Straight onto the device: a GPU server never holds a CPU copy of the weights.
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, self.dtype),
                                                     device_map=self.device, **extra)
        model.eval()
        if self.cpu_batch_matmul and self.device == "cpu" and self.dtype in SMALL_BATCH_DTYPES:
            log.info("linear layers computed weight-major for batched decoding on CPU (%d layers)",
                     use_weight_major_linear(model))

        context = getattr(model.config, "max_position_embeddings", None)
        if context and context < self.max_tokens:
            log.warning("%s handles %d tokens of context; using that instead of %d",
                        self.model_id, context, self.max_tokens)
            self.max_tokens = context
        self.memory = Memory(tokenizer, self.max_tokens, self.memory_ratio)
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        budget_mb = self.kv_cache_mb if self.kv_cache_mb is not None else default_kv_cache_mb(self.device)
        self.cache = PrefixCache(self.memory.decode, int(budget_mb * 1024 * 1024), self.kv_reuse,
                                 on_evict=lambda entry: self.metrics.evictions.inc())
        self.engine = Engine(model, tokenizer, end_of_turn_ids(model, tokenizer), self.cache, self.max_waiting,
                             self.max_batch or MAX_BATCH[kind], PREFILL_CHUNK[kind], self.max_seconds, self.metrics)
        log.info("KV cache reuse %s, budget %d MB; up to %d replies decoded together",
                 "on" if self.kv_reuse else "off", budget_mb, self.engine.max_batch)
        self._loaded.set()

    def prompt_ids(self, plan: MemoryPlan, owner: str = "") -> list[int]:
        """The planned prompt's ids, continuing the exact ids of an earlier sequence of the owner's it extends."""
        text = plan.prompt_text
        earlier = self.cache.continuation(text, owner)
        if earlier is None:
            return plan.prompt_ids
        ids, matched = earlier
        return ids + self.memory.encode(text[matched:])

    def generate(self, plan: MemoryPlan, params: SamplingParams, owner: str = "") -> Stream:
        """Start a reply to a planned prompt for `owner` (whose cached prompts it may reuse); the returned stream
        yields text pieces."""
        ids = self.prompt_ids(plan, owner)
        params.max_new_tokens = self.reply_tokens(len(ids), params.max_new_tokens)
        public = plan.public_tokens if ids[:plan.public_tokens] == plan.prompt_ids[:plan.public_tokens] else 0
        return self.engine.submit(ids, params, owner, public)

    def queue_position(self, stream: Stream) -> tuple[int, int]:
        """(place in the queue, 1 for next and 0 once started; replies being written now)."""
        return self.engine.position(stream), self.engine.running

    def cancel_all(self) -> int:
        """End every running and queued reply now (a shutdown); each is stored as stopped."""
        return self.engine.cancel_all() if self.engine else 0


def default_kv_cache_mb(device: str) -> int:
    """The KV cache budget when none is set: a quarter of the GPU's memory, or KV_CACHE_MB_CPU on CPU."""
    if device.startswith("cuda"):
        import torch

        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        return int(total * KV_CACHE_GPU_SHARE / (1024 * 1024))
    return KV_CACHE_MB_CPU


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
