"""The decoding batch's KV cache: one pool of slots that every decoding reply writes into, each at its own length.

Each layer's keys and values live in one buffer shaped [slots, kv_heads, capacity, head_dim].
Reply i of the batch owns slot i: its tokens fill positions 0 to its length, and a decode
step writes every reply's new token at that reply's own position (one indexed write per
layer) and attends through a boolean mask [slots, 1, 1, capacity] that is True over each
slot's filled part. Rows are never padded on the left, so nothing moves when the batch
changes: a reply that joins is copied into the next free slot (one copy of its own cache),
and one that leaves hands its slot to the last reply (one copy of that reply's cache).
Before, each join or leave restacked every reply's cache into a new left-padded batch.

On CPU the engine makes a pool with a slot for every reply it may batch: slots no reply has
written take no memory there (`SlotPool._resize`). A GPU allocates them whole (and copies
fast), so there the slots double as replies join. Capacity grows by `room` tokens when the longest
reply fills it, and the buffers are made again smaller when the replies left would fit in half
the capacity or a quarter of the slots written, so a long conversation that ends does not keep
its memory for the short ones left. A static pool (`static=True`) never changes shape:
the shapes and addresses a captured CUDA graph needs (`fixed_steps.py`); there a step can run
over more slots than hold replies (the spare ones masked to their first position) and attend
over more positions than the longest reply holds.
"""

import torch
from transformers.cache_utils import Cache, DynamicLayer

from webbot.model.kv_buffer import GROWTH_ROOM


def window_of(config) -> int | None:
    """The sliding window of a model whose layers include sliding-window ones (Gemma, Qwen2 with it on), else None."""
    return config.sliding_window if "sliding_attention" in (getattr(config, "layer_types", None) or ()) else None


class PoolFull(RuntimeError):
    """A static pool has no free slot, or no room for a reply this long."""


class PoolLayer(DynamicLayer):
    """One layer's view of the pool, as the model's attention sees it during a decode step."""

    def __init__(self, pool: "SlotPool", index: int):
        super().__init__()
        self.pool, self.index = pool, index
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write each row's one new token at that row's position; return every row's keys and values so far."""
        pool = self.pool
        keys, values = pool.keys[self.index], pool.values[self.index]
        rows, at = pool.step_rows, pool.step_positions
        keys[rows, :, at] = key_states[:, :, 0]
        values[rows, :, at] = value_states[:, :, 0]
        self.keys, self.values = keys[:len(rows), :, :pool.span], values[:len(rows), :, :pool.span]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.pool.span - 1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.pool.span, 0

    def reset(self) -> None:
        raise NotImplementedError("a pool's layers are reset by taking its rows out")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a pool's layers are never cropped")


class SlotPool:
    """Every decoding reply's keys and values, reply i in slot i; `lengths[i]` tokens of it are filled."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype, device, room: int = GROWTH_ROOM,
                 slots: int = 1, capacity: int = 0, static: bool = False, window: int | None = None):
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.window = window  # the model's sliding window, when some of its layers attend only that far back
        self.dtype, self.device, self.room, self.static = dtype, torch.device(device), room, static
        self.lengths: list[int] = []
        self.keys = self.values = None
        self.slots = self.capacity = 0
        self.high_water = 0  # the most replies held since the buffers were made: the slots written to
        self.span = 1  # positions the current step attends over
        self.step_rows = self.step_positions = None
        self._layers = layers
        self.cache = Cache(layers=[PoolLayer(self, i) for i in range(layers)])
        self._resize(max(slots, 1), max(capacity, 1))

    @classmethod
    def like(cls, kv: list[tuple], **options) -> "SlotPool":
        """An empty pool for rows shaped like `kv`, one reply's per-layer (keys, values) [1, heads, tokens, dim]."""
        keys = kv[0][0]
        return cls(len(kv), keys.shape[1], keys.shape[3], keys.dtype, keys.device, **options)

    @property
    def rows(self) -> int:
        """Replies held (slots 0 to rows - 1)."""
        return len(self.lengths)

    @property
    def nbytes(self) -> int:
        """Bytes the pool's buffers take in memory. On CPU, slots never written take none (`_resize`)."""
        slots = self.slots if self.device.type != "cpu" or self.static else self.high_water
        per_slot = 2 * self.kv_heads * self.capacity * self.head_dim * self.keys[0].element_size()
        return self._layers * slots * per_slot

    def add(self, kv: list[tuple]) -> int:
        """Copy one reply's per-layer (keys, values), each [1, heads, tokens, dim], into the next slot; returns it."""
        length = kv[0][0].shape[2]
        slot = self.rows
        if slot >= self.slots or length + 1 > self.capacity:
            if self.static:
                raise PoolFull(f"the pool holds {self.slots} replies of up to {self.capacity - 1} tokens")
            self._resize(max(self.slots, 2 * slot), max(self.capacity, length + 1 + self.room))
        for layer, (keys, values) in enumerate(kv):
            for buffer, part in ((self.keys[layer], keys), (self.values[layer], values)):
                buffer[slot, :, :length] = part[0]
                buffer[slot, :, length:] = 0  # read under the mask later: garbage could be NaN, and 0 x NaN is NaN
        self.mask[slot].fill_(False)
        self.mask[slot, ..., :length] = True
        self.lengths.append(length)
        self.high_water = max(self.high_water, self.rows)
        return slot

    def view(self, slot: int) -> list[tuple]:
        """Per-layer views [1, heads, tokens, dim] of one slot's filled part (valid until the pool changes)."""
        length = self.lengths[slot]
        return [(keys[slot:slot + 1, :, :length], values[slot:slot + 1, :, :length])
                for keys, values in zip(self.keys, self.values, strict=True)]

    def remove(self, slot: int) -> None:
        """Free a slot: the last reply moves into it (so slots stay 0 to rows - 1). The buffers are made again,
        smaller, when the longest reply left fits in half their capacity or a quarter of the slots written hold
        replies."""
        last = self.rows - 1
        if slot != last:
            length = self.lengths[last]
            for keys, values in zip(self.keys, self.values, strict=True):
                keys[slot, :, :length] = keys[last, :, :length]  # past its length the slot holds finite numbers
                values[slot, :, :length] = values[last, :, :length]
            self.mask[slot] = self.mask[last]
            self.lengths[slot] = length
        self.lengths.pop()
        if not self.static:
            needed = max(self.lengths, default=0) + 1 + self.room
            if 2 * needed <= self.capacity or 4 * max(self.rows, 1) <= self.high_water:
                self._resize(self.slots, min(needed, self.capacity))

    def prepare(self, step_rows: int | None = None, span: int | None = None) -> tuple[Cache, torch.Tensor,
                                                                                      torch.Tensor]:
        """Ready a decode step over the first `step_rows` slots attending over the first `span` positions (by default
        the rows held and the longest one's positions; a graph's fixed shape asks for more): grows capacity when a
        row would not fit, marks each row's new position in the mask. Returns the cache to hand the model, its
        attention mask [step_rows, 1, 1, span] (with a sliding window, a mask per kind of layer, as transformers
        takes them) and position ids [step_rows, 1]."""
        step_rows = step_rows or self.rows
        longest = max(self.lengths)
        if longest + 1 > self.capacity:
            if self.static:
                raise PoolFull(f"a reply reached the pool's {self.capacity - 1} tokens")
            self._resize(self.slots, longest + 1 + self.room)
        at = self.lengths + [0] * (step_rows - self.rows)  # spare slots write (and attend to) their first position
        self.step_rows = self._arange[:step_rows]
        self.step_positions = self._positions[:step_rows]
        self.step_positions.copy_(torch.tensor(at), non_blocking=True)
        self.mask[self.step_rows, 0, 0, self.step_positions] = True
        self.span = span or longest + 1
        mask = self.mask[:step_rows, :, :, :self.span]
        if self.window:  # the sliding layers' own mask: also nothing a window or more behind the new token
            near = self._window_mask[:step_rows, :, :, :self.span]
            reach = (self.step_positions - self.window)[:, None, None, None]
            torch.logical_and(mask, self._columns[:self.span] > reach, out=near)
            mask = {"full_attention": mask, "sliding_attention": near}
        return self.cache, mask, self.step_positions[:, None]

    def advance(self) -> None:
        """The step succeeded: every row holds one more token."""
        self.lengths = [length + 1 for length in self.lengths]

    def _resize(self, slots: int, capacity: int) -> None:
        """New buffers of `slots` x `capacity` tokens holding the replies the old ones held.

        Only the slots of replies are written (their filled part copied, the rest zeroed). On CPU a large buffer is
        memory the system hands out as it is first written, so slots no reply has used yet take no memory: the
        engine makes a pool with a slot for every reply it may batch, and adding one never copies the others. A
        static pool is zeroed whole: its steps read every slot."""
        shape = (slots, self.kv_heads, capacity, self.head_dim)
        make = torch.zeros if self.static else torch.empty
        keys = [make(shape, dtype=self.dtype, device=self.device) for _ in range(self._layers)]
        values = [make(shape, dtype=self.dtype, device=self.device) for _ in range(self._layers)]
        mask = torch.zeros((slots, 1, 1, capacity), dtype=torch.bool, device=self.device)
        mask[:, ..., 0] = True  # a spare slot attends to its first position: never a row of nothing (NaN)
        for slot, length in enumerate(self.lengths):
            for layer in range(self._layers):
                for new, old in ((keys[layer], self.keys[layer]), (values[layer], self.values[layer])):
                    new[slot, :, :length] = old[slot, :, :length]
                    new[slot, :, length:] = 0
            mask[slot, ..., :length] = True
        self.keys, self.values, self.mask = keys, values, mask
        for layer in self.cache.layers:  # the last step's views would keep the old buffers alive
            layer.keys = layer.values = None
        self.slots, self.capacity, self.high_water = slots, capacity, self.rows
        self._arange = torch.arange(slots, device=self.device)
        self._columns = torch.arange(capacity, device=self.device)
        self._window_mask = torch.zeros_like(mask) if self.window else None
        self._positions = torch.zeros(slots, dtype=torch.long, device=self.device)
