"""Prefix cache: the KV cache of finished replies, kept so the next turn prefills only its new tokens.

Each entry holds a token sequence (a prompt and the reply the model generated for it,
with the exact generated ids, since re-tokenising the reply text need not reproduce
them), its text, and optionally the model's key/value tensors for its first `kv_len`
tokens. A new prompt reuses the entry sharing its longest token prefix; the rest is
prefilled. All tensors together stay under a byte budget: least recently used entries
(used meaning continued, not merely sharing a template head) lose their tensors first
(an evicted conversation pays one full prefill) and keep only their ids, which cost
little and still let the next prompt be built from the same ids.
With reuse switched off no tensors are kept at all, so prompts are identical either way.

Every entry belongs to an owner (a browser, a user, an API key or an address), and a
prompt reuses only its own owner's entries: otherwise how much of a prompt came from the
cache (its time to first token, the `cached_tokens` count) would tell one person what
another wrote. The one exception is a public head, the chat template and the server's
own system prompt, which every owner's prompt may take from any entry: it holds nothing
anybody wrote (the same idea as vLLM's `cache_salt`). That reuse is all or nothing, so it
says no more than "someone used this server's default prompt". When the budget is
exceeded, the owner holding the most bytes loses its least recently used tensors first, so
one person's traffic pushes out mostly their own caches.

The tensor helper at the bottom stacks rows of different lengths into one left-padded
batch; the engine uses it when streams join or leave a batch.
"""

import threading
import time
from dataclasses import dataclass, field

MAX_ENTRIES = 4096  # entries kept in all, most of them ids only


def common_prefix(a, b) -> int:
    """Length of the longest common prefix of two lists or strings (slice compares run in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] holds, a[:hi] == b[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(eq=False)
class Entry:
    """One cached token sequence, its text, and the key/value tensors of its first kv_len tokens."""

    ids: list[int]
    text: str
    kv: list[tuple] | None = None  # per layer (keys, values), each [1, heads, kv_len, head_dim]
    prompt_len: int = 0  # the rest of ids was generated
    owner: str = ""  # whose prompt and reply these are
    public_len: int = 0  # leading tokens holding nothing private (template and server system prompt)
    used: float = field(default_factory=time.monotonic)

    @property
    def kv_len(self) -> int:
        """Tokens the tensors cover (the first kv_len of ids)."""
        return self.kv[0][0].shape[2] if self.kv else 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors."""
        if not self.kv:
            return 0
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)


class PrefixCache:
    """Entries under a byte budget with least-recently-used eviction; safe to use from several threads."""

    def __init__(self, decode, budget_bytes: int, reuse: bool = True, max_entries: int = MAX_ENTRIES,
                 on_evict=None):
        self.decode = decode  # ids -> text exactly as the chat template writes it (special tokens kept)
        self.budget = budget_bytes
        self.reuse = reuse
        self.max_entries = max_entries
        self.on_evict = on_evict or (lambda entry: None)
        self._entries: list[Entry] = []
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of tensors held now."""
        with self._lock:
            return sum(entry.nbytes for entry in self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def continuation(self, text: str, owner: str) -> tuple[list[int], int] | None:
        """(ids, n): ids of an earlier sequence of `owner`'s whose text is `text[:n]`, for the longest such n.

        A prompt built as these ids plus the tokens of `text[n:]` shares the earlier
        sequence's ids token for token, so its KV cache applies. Where the text differs
        (a chat template that trims a reply, a stop string cut from it), the ids are cut to
        the last token whose text still matches.
        """
        with self._lock:
            best, shared = None, 0
            for entry in self._entries:
                if entry.owner != owner:
                    continue
                n = common_prefix(entry.text, text)
                if n > shared:
                    best, shared = entry, n
            if best is None:
                return None
        if shared == len(best.text):
            best.used = time.monotonic()  # the conversation goes on: recently used
            return best.ids, shared
        lo, hi = 0, len(best.ids)  # the text of ids[:lo] begins `text`; that of ids[:hi] does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if text.startswith(self.decode(best.ids[:mid])):
                lo = mid
            else:
                hi = mid
        return (best.ids[:lo], len(self.decode(best.ids[:lo]))) if lo else None

    def lookup(self, ids: list[int], owner: str, public_len: int = 0
               ) -> tuple[int, list[tuple] | None, Entry | None]:
        """(n, tensors of the first n tokens, the entry) for the entry sharing the most leading tokens with `ids`.

        Only `owner`'s entries count, except that the first `public_len` tokens of `ids` (a
        public head) may come whole from anyone's entry that begins with the same head. At
        least the last token of `ids` is left out, so the caller has something to feed the
        model for the next token's logits. The tensors are views: copy before writing.
        """
        best, reused = None, 0
        public_len = min(public_len, len(ids) - 1)
        with self._lock:
            for entry in self._entries:
                if not entry.kv_len or entry.ids[0] != ids[0]:
                    continue
                if entry.owner == owner:
                    n = common_prefix(entry.ids[:entry.kv_len], ids[:-1])
                elif (public_len and entry.public_len >= public_len and entry.kv_len >= public_len
                      and entry.ids[:public_len] == ids[:public_len]):
                    n = public_len  # the public head, whole or not at all
                else:
                    continue
                if n > reused:
                    best, reused = entry, n
            if best is None:
                return 0, None, None
            if reused == best.kv_len and best.owner == owner:  # a continuation, not just a shared head
                best.used = time.monotonic()
            return reused, [(k[:, :, :reused], v[:, :, :reused]) for k, v in best.kv], best

    def add(self, ids: list[int], kv: list[tuple] | None, prompt_len: int, continues: Entry | None = None,
            owner: str = "", public_len: int = 0) -> Entry:
        """Keep a finished sequence of `owner`'s; entries it makes useless are dropped, then the budget is enforced.

        Useless: an entry of the same owner that the new one extends, and `continues`, the
        entry whose whole prompt the new sequence reused (the conversation went on from it;
        what it held beyond that prompt is its old reply, which the new prompt tokenised
        differently). Another owner's entries are never dropped for this one's sake.
        """
        entry = Entry(list(ids), self.decode(ids), kv if self.reuse else None, prompt_len, owner, public_len)
        with self._lock:
            self._entries = [e for e in self._entries
                             if e.owner != owner or (not _extends(entry, e) and e is not continues)]
            self._entries.append(entry)
            self._enforce()
        return entry

    def _enforce(self) -> None:
        """Drop tensors past the byte budget and entries past the count, from the owner holding the most first."""
        held: dict[str, int] = {}
        for entry in self._entries:
            held[entry.owner] = held.get(entry.owner, 0) + entry.nbytes
        total = sum(held.values())
        with_tensors = sorted((e for e in self._entries if e.kv is not None), key=lambda e: e.used)
        while total > self.budget and with_tensors:
            biggest = max(held, key=held.get)
            entry = next(e for e in with_tensors if e.owner == biggest)
            with_tensors.remove(entry)
            held[biggest] -= entry.nbytes
            total -= entry.nbytes
            entry.kv = None
            self.on_evict(entry)
        excess = len(self._entries) - self.max_entries
        if excess > 0:
            counts: dict[str, int] = {}
            for entry in self._entries:
                counts[entry.owner] = counts.get(entry.owner, 0) + 1
            gone = set()
            for entry in sorted(self._entries, key=lambda e: e.used):
                if len(gone) == excess:
                    break
                if counts[entry.owner] == max(counts.values()):
                    gone.add(id(entry))
                    counts[entry.owner] -= 1
            self._entries = [e for e in self._entries if id(e) not in gone]


def _extends(new: Entry, old: Entry) -> bool:
    """True when `new` continues `old` and covers at least its tensors, so `old` adds nothing."""
    return (len(new.ids) >= len(old.ids) and new.ids[:len(old.ids)] == old.ids
            and new.kv_len >= old.kv_len)


def stack_left_padded(rows: list[list[tuple]]) -> tuple[list[tuple], list[int]]:
    """Per-layer (keys, values) of several rows as one batch, shorter rows padded on the left.

    Returns the batch and each row's padding; padded positions must be masked out.
    """

    lengths = [row[0][0].shape[2] for row in rows]
    longest = max(lengths)
    pads = [longest - n for n in lengths]
    layers = []
    for layer in range(len(rows[0])):
        stacked = []
        for part in (0, 1):
            first = rows[0][layer][part]
            batch = first.new_zeros((len(rows), first.shape[1], longest, first.shape[3]))
            for i, row in enumerate(rows):
                batch[i, :, pads[i]:] = row[layer][part][0]
            stacked.append(batch)
        layers.append(tuple(stacked))
    return layers, pads

