"""KV caches that grow in place: each layer's keys and values live in a buffer with room for more tokens.

transformers' DynamicCache appends a token by concatenating the layer's whole cache with
it: every decode step copies every layer's keys and values, a cost that grows with the
context (at 3,500 tokens on SmolLM2 the copies took more time than the weights). Here a
step writes the new token into the room left at the end of a preallocated buffer, and the
model reads a view of the filled part; a full buffer grows by `room` tokens at once, so a
copy happens once per `room` steps instead of every step.

A buffer's tensors are shaped [batch, heads, capacity, head_dim]; the view handed out is
[batch, heads, length, head_dim] over the same memory. The engine reads each prompt into
one of these, then copies it into the decoding batch's pool (`kv_pool.py`).
"""

import torch
from transformers.cache_utils import Cache, DynamicLayer

GROWTH_ROOM = 256  # tokens of room a decoding batch's buffers get, and grow by when full


class BufferedLayer(DynamicLayer):
    """One layer's keys and values in buffers with room to grow; `keys` and `values` are views of the filled part."""

    def __init__(self, room: int = GROWTH_ROOM):
        super().__init__()
        self.room = room
        self.length = 0
        self._keys = self._values = None  # the buffers

    @classmethod
    def holding(cls, keys: torch.Tensor, values: torch.Tensor, room: int = GROWTH_ROOM) -> "BufferedLayer":
        """A layer that starts with a copy of `keys` and `values`, with `room` tokens free after them."""
        layer = cls(room)
        layer.update(keys, values)
        return layer

    @property
    def capacity(self) -> int:
        """Tokens the buffers hold before they must grow."""
        return 0 if self._keys is None else self._keys.shape[2]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write the new tokens after the filled part (growing the buffers first when they are full)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[2]
        if end > self.capacity:
            self._grow(key_states, value_states, end + self.room)
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, capacity: int) -> None:
        """New buffers of `capacity` tokens, holding what the old ones held."""
        keys = key_states.new_empty((*key_states.shape[:2], capacity, key_states.shape[3]))
        values = value_states.new_empty((*value_states.shape[:2], capacity, value_states.shape[3]))
        if self.length:
            keys[:, :, :self.length] = self._keys[:, :, :self.length]
            values[:, :, :self.length] = self._values[:, :, :self.length]
        self._keys, self._values = keys, values

    def get_seq_length(self) -> int:
        return self.length

    def truncate(self, length: int) -> None:
        """Forget the tokens after the first `length` (those a failed forward pass wrote)."""
        if self.is_initialized and length < self.length:
            self.length = length
            self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]

    def reset(self) -> None:
        self.length, self._keys, self._values = 0, None, None
        self.keys = self.values = None
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a buffered KV cache is never cropped")


def buffered_cache(kv: list[tuple] | None = None, room: int = GROWTH_ROOM) -> Cache:
    """A cache for a model's forward: starting from a copy of per-layer (keys, values) if given, else empty (its
    layers appear as the model writes them), every layer with `room` tokens free."""
    if kv:
        return Cache(layers=[BufferedLayer.holding(keys, values, room) for keys, values in kv])
    return Cache(layer_class_to_replicate=lambda: BufferedLayer(room))


def compact(tensor):
    """The tensor itself when it owns just its own memory, else a copy (so a big batch can be freed)."""
    if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor
