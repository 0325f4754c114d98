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

With a disk tier (`kv_disk.py`), tensors that leave RAM are written to a file first (by a
writer thread, so decoding does not wait), a shutdown writes every kept cache, and the
files of the last run come back as entries when the model loads. A lookup sees both
tiers: a file is read when that is faster than prefilling the tokens it saves, judged from
this machine's own prefill and read rates, measured as they go (`Rates`).
"""

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from webbot.model.kv_disk import Rates

log = logging.getLogger(__name__)

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
    conversation: str | None = None  # the page's conversation it belongs to, if any
    used: float = field(default_factory=time.monotonic)
    disk: object | None = None  # its file (kv_disk.DiskRecord), when one is written
    spilling: list[tuple] | None = None  # tensors on their way to a file: still usable meanwhile

    @property
    def in_memory(self) -> list[tuple] | None:
        """The tensors if they are in memory (kept, or being written out)."""
        return self.kv or self.spilling

    @property
    def kv_len(self) -> int:
        """Tokens the tensors cover (the first kv_len of ids), in memory or in the file."""
        tensors = self.in_memory
        if tensors:
            return tensors[0][0].shape[2]
        return self.disk.kv_len if self.disk is not None else 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors kept in memory (not counting those being written out)."""
        if not self.kv:
            return 0
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)


class Reuse(NamedTuple):
    """What a lookup found: tokens reused, their tensors, the entry, and the tier they came from."""

    tokens: int
    kv: list[tuple] | None
    entry: Entry | None
    tier: str | None  # "ram" or "disk"


class PrefixCache:
    """Entries under a byte budget with least-recently-used eviction; safe to use from several threads."""

    def __init__(self, decode, budget_bytes: int, reuse: bool = True, max_entries: int = MAX_ENTRIES,
                 on_evict=None, disk=None, device="cpu"):
        self.decode = decode  # ids -> text exactly as the chat template writes it (special tokens kept)
        self.budget = budget_bytes
        self.reuse = reuse
        self.max_entries = max_entries
        self.on_evict = on_evict or (lambda entry: None)
        self.disk = disk if reuse else None  # a kv_disk.DiskTier, or None
        self.device = device  # where tensors read from a file go
        self.rates = Rates()  # this machine's prefill and file read speeds, for the break-even
        self._entries: list[Entry] = []
        self._lock = threading.Lock()
        self._writes: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None

    def restore(self) -> int:
        """Take in the disk tier's files from the last run as entries (ids in memory, tensors in the file)."""
        if self.disk is None:
            return 0
        records = self.disk.open()
        now, wall = time.monotonic(), time.time()
        with self._lock:
            for record in records:
                self._entries.append(Entry(list(record.ids), self.decode(record.ids), None, record.prompt_len,
                                           record.owner, record.public_len, record.conversation,
                                           used=now - max(0.0, wall - record.used), disk=record))
        return len(records)

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

    def lookup(self, ids: list[int], owner: str, public_len: int = 0) -> Reuse:
        """The entry sharing the most leading tokens with `ids`, its tensors for them, and where they came from.

        Only `owner`'s entries count, except that the first `public_len` tokens of `ids` (a
        public head) may come whole from anyone's entry that begins with the same head. At
        least the last token of `ids` is left out, so the caller has something to feed the
        model for the next token's logits. An entry whose tensors are only in a file is
        read when that beats prefilling the tokens it adds over the best entry in memory.
        The tensors are views: copy before writing.
        """
        public_len = min(public_len, len(ids) - 1)
        with self._lock:
            in_ram, on_disk = (None, 0, None), (None, 0)
            for entry in self._entries:
                n = self._shared(entry, ids, owner, public_len)
                if not n:
                    continue
                tensors = entry.in_memory
                if tensors is not None:
                    if n > in_ram[1]:
                        in_ram = (entry, n, tensors)
                elif n > on_disk[1]:
                    on_disk = (entry, n)
        entry, reused, tensors = in_ram
        disk_entry, disk_reused = on_disk
        if disk_entry is not None and disk_reused > reused:
            record = disk_entry.disk
            share = disk_reused / max(1, record.kv_len)
            if self.rates.worth_reading(disk_reused - reused, int(record.nbytes * share)):
                started = time.monotonic()
                kv = self.disk.load(record, self.device)
                if kv is not None:
                    self.rates.read(record.nbytes, time.monotonic() - started)
                    with self._lock:
                        if disk_entry in self._entries:
                            disk_entry.kv = kv
                        else:
                            disk_entry = None
                        self._enforce()
                    if disk_entry is not None:
                        return self._found(disk_entry, disk_reused, owner, kv, "disk")
                else:
                    with self._lock:
                        disk_entry.disk = None  # unusable and removed: an entry of ids only now
        if entry is None:
            return Reuse(0, None, None, None)
        return self._found(entry, reused, owner, tensors, "ram")

    def _shared(self, entry: Entry, ids: list[int], owner: str, public_len: int) -> int:
        """How many leading tokens of `ids` this entry may supply to `owner`."""
        kv_len = entry.kv_len
        if not kv_len or entry.ids[0] != ids[0]:
            return 0
        if entry.owner == owner:
            return common_prefix(entry.ids[:kv_len], ids[:-1])
        if public_len and entry.public_len >= public_len and kv_len >= public_len \
                and entry.ids[:public_len] == ids[:public_len]:
            return public_len  # the public head, whole or not at all
        return 0

    def _found(self, entry: Entry, reused: int, owner: str, kv: list[tuple], tier: str) -> Reuse:
        if reused == entry.kv_len and entry.owner == owner:  # a continuation, not just a shared head
            entry.used = time.monotonic()
        return Reuse(reused, [(k[:, :, :reused], v[:, :, :reused]) for k, v in kv], entry, tier)

    def add(self, ids: list[int], kv: list[tuple] | None, prompt_len: int, continues: Entry | None = None,
            owner: str = "", public_len: int = 0, conversation: str | None = None) -> Entry:
        """Keep a finished sequence of `owner`'s; entries it makes useless are dropped, then the budget is enforced.

        Useless: an entry of the same owner that the new one extends, and `continues`, the
        entry whose whole prompt the new sequence reused (the conversation went on from it;
        what it held beyond that prompt is its old reply, which the new prompt tokenised
        differently). Another owner's entries are never dropped for this one's sake.
        """
        entry = Entry(list(ids), self.decode(ids), kv if self.reuse else None, prompt_len, owner, public_len,
                      conversation)
        with self._lock:
            useless = [e for e in self._entries if e.owner == owner and (_extends(entry, e) or e is continues)]
            self._drop(useless)
            self._entries.append(entry)
            self._enforce()
        return entry

    def forget(self, conversations: set[str]) -> None:
        """Drop what is kept of these conversations (deleted for good), in memory and on disk."""
        with self._lock:
            self._drop([e for e in self._entries if e.conversation in conversations])
        if self.disk is not None:
            self.disk.forget(conversations)

    def spill_all(self, timeout: float = 30.0) -> int:
        """Write every cache kept in memory to the disk tier (a shutdown); returns how many were written."""
        if self.disk is None:
            return 0
        with self._lock:
            waiting = [e for e in self._entries if e.kv is not None
                       and (e.disk is None or e.disk.kv_len < e.kv_len)]
        deadline, written = time.monotonic() + timeout, 0
        for entry in sorted(waiting, key=lambda e: e.used, reverse=True):  # the most recent first
            if time.monotonic() > deadline:
                log.warning("stopped writing KV caches to disk after %.0f s; %d left unwritten", timeout,
                            len(waiting) - written)
                break
            self._write(entry, entry.kv)
            written += 1
        self._writes.join()
        return written

    def release(self) -> int:
        """Out of memory: every kept tensor leaves memory now (an entry keeps its ids, and its file if it has one),
        so a failed step can be tried again; returns the bytes let go."""
        with self._lock:
            freed = 0
            for entry in self._entries:
                if entry.kv is not None:
                    freed += entry.nbytes
                    entry.kv = None
                    self.on_evict(entry)
            return freed

    def _drop(self, gone: list[Entry]) -> None:
        """Take entries out (under the lock), and their files with them."""
        if not gone:
            return
        ids = {id(e) for e in gone}
        self._entries = [e for e in self._entries if id(e) not in ids]
        for entry in gone:
            if entry.disk is not None:
                self.disk.remove(entry.disk)

    def _spill(self, entry: Entry) -> None:
        """Move an entry's tensors out of the memory budget: to a file (by the writer thread) when there is a
        disk tier and the file does not already hold them, else dropped."""
        tensors, entry.kv = entry.kv, None
        if self.disk is None or (entry.disk is not None and entry.disk.kv_len >= tensors[0][0].shape[2]):
            return
        entry.spilling = tensors
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_files, name="kv-disk-writer", daemon=True)
            self._writer.start()
        self._writes.put(entry)

    def _write_files(self) -> None:
        while True:
            entry = self._writes.get()
            try:
                tensors = entry.spilling
                if tensors is not None:
                    self._write(entry, tensors)
            except Exception:  # a write that fails loses only this cache; the reply already went out
                log.exception("could not write a KV cache to disk")
            finally:
                entry.spilling = None
                self._writes.task_done()

    def _write(self, entry: Entry, tensors: list[tuple]) -> None:
        record = self.disk.save(entry.ids, tensors, entry.prompt_len, entry.owner, entry.public_len,
                                entry.conversation)
        if record is None:
            return
        with self._lock:
            if entry in self._entries:
                old, entry.disk = entry.disk, record
                if old is not None and old.path != record.path:
                    self.disk.remove(old)
                return
        self.disk.remove(record)  # the entry was dropped meanwhile: its file would be an orphan

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
            self._spill(entry)
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
            self._drop([e for e in self._entries if id(e) in gone])


def _extends(new: Entry, old: Entry) -> bool:
    """True when `new` continues `old` and covers at least its tensors, so `old` adds nothing."""
    return (len(new.ids) >= len(old.ids) and new.ids[:len(old.ids)] == old.ids
            and new.kv_len >= old.kv_len)
