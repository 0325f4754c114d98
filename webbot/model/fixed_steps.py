"""Decode steps at fixed shapes, replayed from CUDA graphs: one graph per bucket of batch size and attended span.

Eager decoding on a GPU spends most of a step launching small kernels from Python (counted
on CPU for Llama-3.2-1B: ~600 operations and ~8 ms of host time a step, which caps it near
8% of an H100's bandwidth roofline). A CUDA graph records a step's kernels once and replays
them with one launch, but it replays fixed addresses and shapes. So here a step runs over a
static pool (`kv_pool.py`: a slot for every reply the engine batches, room for the longest
sequence it allows) with fixed input buffers; the batch is padded to the next bucket of rows
(spare slots write and read only their first position, and their scores are dropped) and
attends over the next bucket of positions (powers of two from `SPAN_BUCKET`), so a short
conversation does not read the whole pool.

`WEBBOT_CUDA_GRAPHS=on` turns graphs on, on CUDA only; it is off by default because it has
never run on a GPU: `bench/gpu_check.py` compares its tokens and speed with eager steps the
first time one is lent. Without capture (off the GPU, or for a shape whose capture failed,
which is logged and then runs eagerly) the same fixed-shape steps run eagerly: that is how
the CPU tests check the padding, the buckets and the static pool give the same tokens.
"""

import logging

import torch

from webbot.model.kv_pool import SlotPool, window_of

log = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)  # batch sizes a step is padded to (then the pool's slots)
SPAN_BUCKET = 256  # the fewest positions a step attends over; spans double from it up to the pool's capacity
WARM_UP_RUNS = 2  # eager runs before a capture (lazy initialisation must not happen inside one)
STATIC_POOL_SHARE = 0.5  # of the GPU memory free after loading, the most a static pool may take


def static_slots(free_bytes: int, tokens: int, bytes_per_token: int, max_batch: int) -> int:
    """How many replies of up to `tokens` tokens a static pool may hold within STATIC_POOL_SHARE of `free_bytes`: at
    most `max_batch`, 0 when not even one fits. The pool is allocated whole when decoding starts, so a card with
    less room batches fewer replies rather than running out of memory at the first reply."""
    return min(max_batch, int(free_bytes * STATIC_POOL_SHARE) // ((tokens + 1) * bytes_per_token))


def bucket(value: int, buckets, largest: int) -> int:
    """The smallest of `buckets` (then `largest`) that is at least `value`."""
    return min(next((b for b in buckets if b >= value), largest), largest)


def span_bucket(positions: int, capacity: int) -> int:
    """The positions a step attends over when the longest row needs `positions`: a power-of-two multiple of
    SPAN_BUCKET, at most the capacity."""
    span = SPAN_BUCKET
    while span < positions:
        span *= 2
    return min(span, capacity)


class FixedSteps:
    """Decode steps over a static pool at bucketed shapes, captured as CUDA graphs when `capture` is on."""

    def __init__(self, model, pool: SlotPool, capture: bool = False):
        if not pool.static:
            raise ValueError("fixed-shape steps need a static pool")
        self.model, self.pool = model, pool
        self.capture = capture and pool.device.type == "cuda"
        self.input_ids = torch.zeros((pool.slots, 1), dtype=torch.long, device=pool.device)  # spare rows: any id
        self.graphs: dict[tuple[int, int], tuple | None] = {}  # (rows, span): (graph, logits), None: runs eagerly
        self._memory = None  # the memory pool the graphs share

    @classmethod
    def for_model(cls, model, kv: list[tuple], slots: int, tokens: int, capture: bool) -> "FixedSteps":
        """Steps for up to `slots` replies of up to `tokens` tokens each, with a pool shaped like `kv` (one reply's
        per-layer keys and values)."""
        pool = SlotPool.like(kv, slots=slots, capacity=tokens + 1, static=True, window=window_of(model.config))
        return cls(model, pool, capture)

    def shape(self, rows: int) -> tuple[int, int]:
        """The (rows, span) a step over the pool's replies runs at."""
        return (bucket(rows, ROW_BUCKETS, self.pool.slots),
                span_bucket(max(self.pool.lengths) + 1, self.pool.capacity))

    def run(self, ids: list[int]) -> torch.Tensor:
        """One decode step: `ids` holds each reply's last token, reply i in slot i. Returns scores [rows, vocab]."""
        count = len(ids)
        rows, span = self.shape(count)
        self.input_ids[:count, 0].copy_(torch.tensor(ids), non_blocking=True)
        cache, mask, positions = self.pool.prepare(step_rows=rows, span=span)
        inputs = {"input_ids": self.input_ids[:rows], "position_ids": positions, "attention_mask": mask,
                  "past_key_values": cache, "use_cache": True}
        recorded = self.graphs.get((rows, span))
        if self.capture and (rows, span) not in self.graphs:
            recorded = self.graphs[(rows, span)] = self._record(inputs, rows, span)  # runs this step once
        elif recorded is not None:
            recorded[0].replay()
        if recorded is None:
            return self.model(**inputs).logits[:count, -1]
        return recorded[1][:count, -1]

    def _record(self, inputs: dict, rows: int, span: int) -> tuple | None:
        """Capture one step's kernels at this shape and replay them once; None (logged) where capture fails. The
        warm-up runs are the same step: each writes the same keys and values at the same positions."""
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARM_UP_RUNS):
                    self.model(**inputs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._memory):
                logits = self.model(**inputs).logits
            self._memory = graph.pool()
            graph.replay()
            log.info("captured a CUDA graph for decode steps of %d rows over %d positions", rows, span)
            return graph, logits
        except Exception:
            log.exception("capturing a CUDA graph for %d rows over %d positions failed: those steps run eagerly",
                          rows, span)
            return None
