"""ChatBot: one instruction-tuned LLM and its tokenizer, loaded once, answering with memory.

Loads any causal LM from a hub id, a local directory or a `.gguf` file
(`webbot/model/loading.py`); builds prompts with the tokenizer's own chat template and
trims them to the context (`webbot/model/memory.py`); streams replies through a single
generation engine (`webbot/model/engine.py`) that batches concurrent replies and reuses
the KV cache of earlier turns (`webbot/model/kv_cache.py`). It satisfies the `Bot`
protocol (`webbot/model/bot.py`), as the remote backend does. No Flask imports, and
nothing heavy happens until `load()` (torch and the engine are imported there).

A conversation's next prompt is built from the exact token ids of the previous prompt and
reply when its text continues them (re-tokenising a reply's text need not give back the
ids the model generated), so the cached prefix matches token for token.
"""

import logging
import threading
import time
from functools import partial
from pathlib import Path

from webbot.config import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_MODEL,
    DEFAULT_RECALL_SHARE,
    DEFAULT_REPLY_SHARE,
    DEFAULT_SYSTEM_PROMPT,
    MAX_BATCH,
    MAX_REPLY_SECONDS,
    MAX_WAITING,
    PREFILL_CHUNK,
    QUANTS,
)
from webbot.model.bot import PlansReplies
from webbot.model.kv_cache import PrefixCache
from webbot.model.memory import Memory, MemoryPlan
from webbot.model.metrics import Metrics
from webbot.model.naming import display_name
from webbot.model.stream import SamplingParams, Stream

log = logging.getLogger(__name__)


WARM_UP = "warm-up"  # the owner and conversation of the reply that warms the GPU up at load


class ChatBot(PlansReplies):
    """Holds the model and answers conversations; call `load()` once before use, `close()` when done."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto",
                 max_tokens: int = DEFAULT_MAX_TOKENS, reply_share: float = DEFAULT_REPLY_SHARE,
                 system_prompt: str = DEFAULT_SYSTEM_PROMPT, max_waiting: int = MAX_WAITING,
                 max_batch: int | None = None, kv_cache_mb: float | None = None, kv_reuse: bool = True,
                 max_seconds: float = MAX_REPLY_SECONDS, cpu_batch_matmul: bool = True, metrics=None,
                 kv_disk_dir: Path | None = None, kv_disk_mb: float | None = None,
                 recall_share: float = DEFAULT_RECALL_SHARE, quant: str = QUANTS[0], cuda_graphs: bool = False):
        self.model_id = model
        self.max_waiting, self.max_batch, self.max_seconds = max_waiting, max_batch, max_seconds
        self.kv_cache_mb, self.kv_reuse = kv_cache_mb, kv_reuse
        self.kv_disk_dir, self.kv_disk_mb = kv_disk_dir, kv_disk_mb  # no directory or 0 MB: no disk tier
        self.cpu_batch_matmul = cpu_batch_matmul
        self.cuda_graphs = cuda_graphs  # decode steps replayed from CUDA graphs (fixed_steps.py), on CUDA only
        self.metrics = metrics or Metrics()  # counters of this bot's engine, served at /metrics
        self.metrics.watch(self)
        self.requested = (device, dtype, quant)
        self.max_tokens = max_tokens
        self.reply_share, self.recall_share = reply_share, recall_share
        self.system_prompt = system_prompt
        self.device = self.dtype = self.quant = None
        self.memory: Memory | None = None
        self.cache: PrefixCache | None = None
        self.engine = None  # the generation engine, made by load()
        self.error: str | None = None
        self.on_failure = None  # called with a sentence if the GPU fails after loading (the app restarts then)
        self._loaded = threading.Event()

    @property
    def ready(self) -> bool:
        """True once the model is loaded and can answer (and its GPU has not failed since)."""
        return self._loaded.is_set() and not self.failure

    @property
    def failure(self) -> str | None:
        """Why the loaded model can no longer answer in this process (its GPU failed), a sentence; else None."""
        return self.engine.failed if self.engine is not None else None

    def _failed(self, sentence: str) -> None:
        if self.on_failure is not None:
            self.on_failure(sentence)

    @property
    def name(self) -> str:
        """The id clients see: the hub id, or the directory or file name of a local model."""
        path = Path(self.model_id)
        return path.name if path.exists() else self.model_id

    @property
    def display_name(self) -> str:
        """What the page calls the model: a name made from the hub id, folder or file."""
        return display_name(self.model_id)

    def load(self) -> "ChatBot":
        """Load tokenizer and model (downloading them if needed) and start the engine; logs progress while it
        works."""
        from webbot.model.loading import progress_in_log

        if self.ready:
            return self
        started = time.monotonic()
        try:
            with progress_in_log(self.model_id):
                self._load()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("could not load model %s", self.model_id)
            raise
        log.info("model %s ready on %s (%s%s) in %.1f s; context %d tokens, prompt budget %d",
                 self.model_id, self.device, self.dtype, ", int8 weights" if self.quant == "int8" else "",
                 time.monotonic() - started,
                 self.max_tokens, self.memory.budget)
        return self

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from webbot.model.cpu_linear import SMALL_BATCH_DTYPES, use_weight_major_linear
        from webbot.model.engine import Engine
        from webbot.model.fixed_steps import FixedSteps, static_slots
        from webbot.model.kv_disk import DiskTier, fingerprint
        from webbot.model.loading import (
            default_kv_cache_mb,
            default_kv_disk_mb,
            end_of_turn_ids,
            gpu_free_bytes,
            kv_bytes_per_token,
            kv_layout,
            load_tokenizer,
            model_source,
            resolve_device_dtype,
        )
        from webbot.model.quant import quantise_int8, resolve_quant

        device, dtype, quant = self.requested
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        self.quant = resolve_quant(quant, self.device)
        log.info("loading %s on %s (%s)", self.model_id, self.device, self.dtype)
        tokenizer = load_tokenizer(self.model_id)
        source, extra = model_source(self.model_id)
        # Straight onto the device: a GPU server never holds a CPU copy of the weights. Weights bound for int8 are
        # read in the files' own dtype (bf16 for Llama 3.2), never all in fp32: that halves the peak at start.
        stored = self.quant == "int8" and not extra  # a .gguf file is dequantised on load: it needs the dtype
        model = AutoModelForCausalLM.from_pretrained(source, dtype="auto" if stored else getattr(torch, self.dtype),
                                                     device_map=self.device, **extra)
        model.eval()
        if self.quant == "int8":
            done = quantise_int8(model, getattr(torch, self.dtype))
            log.info("int8 weights for decoding: %d linear layers, embeddings %s, %.0f MB", done["linear"],
                     done["embedding"], done["bytes"] / 2**20)
        weight_major = (self.cpu_batch_matmul and self.device == "cpu" and self.dtype in SMALL_BATCH_DTYPES
                        and self.quant == "none")  # int8 layers choose their own product
        if weight_major:
            log.info("linear layers computed weight-major for batched decoding on CPU (%d layers)",
                     use_weight_major_linear(model))

        context = getattr(model.config, "max_position_embeddings", None)
        if context and context < self.max_tokens:
            log.warning("%s handles %d tokens of context; using that instead of %d",
                        self.model_id, context, self.max_tokens)
            self.max_tokens = context
        self.memory = Memory(tokenizer, self.max_tokens, self.reply_share, recall_share=self.recall_share)
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        max_batch = self.max_batch or MAX_BATCH[kind]
        per_token = kv_bytes_per_token(model, self.dtype)
        graphs = self.cuda_graphs and kind == "cuda"
        if self.cuda_graphs and not graphs:
            log.warning("CUDA graphs need a CUDA GPU; decoding on %s without them", self.device)
        if graphs:  # their static pool is allocated whole: batch only as many replies as fit
            fits = static_slots(gpu_free_bytes(self.device), self.max_tokens, per_token, max_batch)
            if fits < max_batch:
                log.warning("CUDA graphs: the GPU has room for a static pool of %d replies of %d tokens, not %d%s",
                            fits, self.max_tokens, max_batch, "; decoding without graphs" if not fits else "")
            graphs, max_batch = fits > 0, fits or max_batch
        batch_bytes = max_batch * self.max_tokens * per_token  # the most a batch can hold
        budget_mb = self.kv_cache_mb if self.kv_cache_mb is not None else default_kv_cache_mb(
            self.device, batch_bytes, copies=1 if graphs else 2)
        disk = None
        if self.kv_disk_dir is not None and self.kv_reuse and self.kv_disk_mb != 0:
            disk_mb = self.kv_disk_mb if self.kv_disk_mb is not None else default_kv_disk_mb(self.kv_disk_dir)
            key = fingerprint(kv_layout(model, tokenizer, self.model_id, self.dtype, self.device, weight_major,
                                        self.quant))
            disk = DiskTier(self.kv_disk_dir, key, int(disk_mb * 1024 * 1024),
                            on_evict=lambda record: self.metrics.disk_evictions.inc())
        self.cache = PrefixCache(self.memory.decode, int(budget_mb * 1024 * 1024), self.kv_reuse,
                                 on_evict=lambda entry: self.metrics.evictions.inc(), disk=disk, device=self.device)
        restored = self.cache.restore()
        fixed = partial(FixedSteps.for_model, model, slots=max_batch, tokens=self.max_tokens,
                        capture=True) if graphs else None
        self.engine = Engine(model, tokenizer, end_of_turn_ids(model, tokenizer), self.cache, self.max_waiting,
                             max_batch, PREFILL_CHUNK[kind], self.max_seconds,
                             self.metrics, on_failure=self._failed, fixed_steps=fixed).start()
        log.info("KV cache reuse %s, budget %d MB, %s; up to %d replies decoded together",
                 "on" if self.kv_reuse else "off", budget_mb,
                 f"disk tier {disk.budget // 2**20} MB in {self.kv_disk_dir} ({restored} kept from before)" if disk
                 else "no disk tier", self.engine.max_batch)
        if kind == "cuda":
            log.info("warmed up in %.1f s", self.warm_up())
        self._loaded.set()

    def warm_up(self) -> float:
        """Run one short reply through the engine, so that the first person does not pay the GPU's one-time set-up
        (cuBLAS handles, attention kernels); nothing of it is kept. Returns the seconds it took."""
        started = time.monotonic()
        ids = self.memory.render([{"role": "user", "content": "Hello"}])
        stream = self.engine.submit(ids, SamplingParams(max_new_tokens=4, temperature=0), owner=WARM_UP,
                                    conversation=WARM_UP)
        for _ in stream:
            pass
        self.cache.forget({WARM_UP})
        return time.monotonic() - started

    def close(self, seconds: float = 30.0) -> None:
        """End every reply (as cancelled), stop the engine's worker thread, and write the kept KV caches to the
        disk tier (so the next start goes on from them), taking at most about `seconds`."""
        if self.engine is not None:
            started = time.monotonic()
            self.engine.close(timeout=min(5.0, seconds / 2))
            written = self.cache.spill_all(timeout=max(1.0, seconds - (time.monotonic() - started)))
            if written:
                log.info("wrote %d kept KV caches to disk", written)

    def forget(self, conversations: set[str]) -> None:
        """Drop the kept KV caches of conversations deleted for good (in memory and on disk)."""
        if self.cache is not None and conversations:
            self.cache.forget(conversations)

    def prompt_ids(self, plan: MemoryPlan, owner: str = "") -> list[int]:
        """The planned prompt's ids, continuing the exact ids of an earlier sequence of the owner's it extends."""
        text = plan.prompt_text
        earlier = self.cache.continuation(text, owner)
        if earlier is None:
            return plan.prompt_ids
        ids, matched = earlier
        return ids + self.memory.encode(text[matched:])

    def generate(self, plan: MemoryPlan, params: SamplingParams, owner: str = "",
                 conversation: str | None = None) -> Stream:
        """Start a reply to a planned prompt for `owner` (whose cached prompts it may reuse), in `conversation`
        when it has one; the returned stream yields text pieces."""
        ids = self.prompt_ids(plan, owner)
        params.max_new_tokens = self.reply_tokens(len(ids), params.max_new_tokens)
        public = plan.public_tokens if ids[:plan.public_tokens] == plan.prompt_ids[:plan.public_tokens] else 0
        return self.engine.submit(ids, params, owner, public, conversation)

    def queue_position(self, stream: Stream) -> tuple[int, int]:
        """(place in the queue, 1 for next and 0 once started; replies being written now)."""
        return self.engine.position(stream), self.engine.running

    def cancel_all(self) -> int:
        """End every running and queued reply now (a shutdown); each is stored as stopped."""
        return self.engine.cancel_all() if self.engine else 0

    def upstream_check(self) -> None:
        """No model server: the model runs here."""
        return None

    def gauges(self) -> dict[str, float]:
        """Queue depth, replies being written and KV cache bytes (all zero until the model is loaded)."""
        engine = self.engine
        if engine is None:
            return {"queue_depth": 0, "active_streams": 0, "kv_cache_bytes": 0, "kv_cache_budget": 0,
                    "kv_disk_bytes": 0}
        disk = engine.cache.disk
        return {"queue_depth": engine.waiting, "active_streams": engine.running, "kv_cache_bytes": engine.kv_bytes,
                "kv_cache_budget": engine.cache.budget, "kv_disk_bytes": disk.nbytes if disk else 0}
