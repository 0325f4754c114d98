"""The prefix cache's disk tier: kept KV caches written to files under the data dir, so they outlive a
restart and the RAM budget.

Each cached sequence is one safetensors file: its keys and values per layer, and in the
header the exact token ids, the owner, the conversation, and a `key` that names the model,
its dtype and device kind, the tokenizer and chat template, and this file layout. A file
whose key differs (another model or version) is never read: it is removed when the tier
opens. Files are written to a temporary name and renamed, so a process killed mid-write
leaves no file under a real name; each tensor's CRC-32 is in the header and checked when
the file is read, so a corrupt or truncated file is skipped and removed with a log line,
never used. The files together stay under a byte budget (WEBBOT_KV_DISK_MB): past it the
owner holding the most loses their least recently used file first. No Flask here.
"""

import hashlib
import json
import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

log = logging.getLogger(__name__)

FORMAT = "webbot-kv/1"
READ_OVERHEAD_S = 0.005  # opening a file and reading its header, besides the bytes
SUFFIX = ".safetensors"
TEMPORARY = ".partial"


@dataclass(eq=False)
class DiskRecord:
    """One file of the tier, as its header describes it."""

    path: Path
    owner: str
    conversation: str | None
    ids: list[int]
    prompt_len: int
    public_len: int
    kv_len: int
    nbytes: int
    used: float  # when it was last written or read (time.time())


def fingerprint(parts: dict) -> str:
    """The key of a model's files: a digest of what the KV depends on (model, dtype, tokenizer, layout)."""
    return hashlib.sha256(json.dumps({**parts, "format": FORMAT}, sort_keys=True, default=str).encode()).hexdigest()


def _crc(tensor: torch.Tensor) -> int:
    """CRC-32 of a CPU tensor's bytes (any dtype)."""
    flat = tensor.contiguous().view(-1)
    raw = flat.view(torch.uint8) if flat.dtype.itemsize == 1 else flat.view(
        {2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.dtype.itemsize])
    return zlib.crc32(memoryview(raw.numpy()).cast("B"))


class DiskTier:
    """The files in `directory` that belong to the model `key`, under `budget_bytes`; safe to use from threads."""

    def __init__(self, directory: Path, key: str, budget_bytes: int, on_evict=None):
        self.directory, self.key, self.budget = Path(directory), key, budget_bytes
        self.on_evict = on_evict or (lambda record: None)
        self.records: dict[Path, DiskRecord] = {}
        self._lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(r.nbytes for r in self.records.values())

    def open(self) -> list[DiskRecord]:
        """Read every file's header: keep this model's good files, remove the rest (each with a log line)."""
        for stale in self.directory.glob(f"*{TEMPORARY}"):  # a writer that died before its rename
            log.info("removing an unfinished KV cache file %s", stale.name)
            stale.unlink(missing_ok=True)
        kept = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            record = self._read_header(path)
            if record is not None:
                kept.append(record)
        with self._lock:
            self.records = {r.path: r for r in kept}
        self._enforce()
        if kept:
            log.info("KV cache disk tier: %d conversations' caches kept from before (%.1f MB)", len(self.records),
                     self.nbytes / 1e6)
        return list(self.records.values())

    def _read_header(self, path: Path) -> DiskRecord | None:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("key") != self.key:
                log.info("removing KV cache file %s: made for another model or version", path.name)
                path.unlink(missing_ok=True)
                return None
            return DiskRecord(path, meta["owner"], meta.get("conversation") or None, json.loads(meta["ids"]),
                              int(meta["prompt_len"]), int(meta["public_len"]), int(meta["kv_len"]),
                              path.stat().st_size, path.stat().st_mtime)
        except Exception as exc:  # truncated, not safetensors, a header missing fields
            log.warning("removing unreadable KV cache file %s (%s: %s)", path.name, type(exc).__name__, exc)
            path.unlink(missing_ok=True)
            return None

    def save(self, ids: list[int], kv: list[tuple], prompt_len: int, owner: str, public_len: int,
             conversation: str | None) -> DiskRecord | None:
        """Write one sequence's tensors (covering the first kv_len of `ids`); None when the disk refuses."""
        kv_len = kv[0][0].shape[2]
        name = hashlib.sha256(json.dumps([owner, ids[:kv_len]]).encode()).hexdigest()[:40] + SUFFIX
        path = self.directory / name
        tensors, crcs = {}, {}
        for layer, (keys, values) in enumerate(kv):
            for part, tensor in (("k", keys), ("v", values)):
                cpu = tensor.detach().to("cpu").contiguous()
                tensors[f"{part}.{layer}"] = cpu
                crcs[f"{part}.{layer}"] = _crc(cpu)
        meta = {"key": self.key, "owner": owner, "conversation": conversation or "", "ids": json.dumps(ids),
                "prompt_len": str(prompt_len), "public_len": str(public_len), "kv_len": str(kv_len),
                "crc32": json.dumps(crcs)}
        partial = path.with_name(path.name + TEMPORARY)
        try:
            save_file(tensors, str(partial), metadata=meta)
            os.replace(partial, path)  # whole or not at all, under the real name
        except OSError as exc:  # disk full, read-only: the cache is a convenience, the reply is not affected
            log.warning("could not write a KV cache file (%s); it stays in memory only", exc)
            partial.unlink(missing_ok=True)
            return None
        record = DiskRecord(path, owner, conversation, list(ids), prompt_len, public_len, kv_len,
                            path.stat().st_size, time.time())
        with self._lock:
            self.records[path] = record
        self._enforce()
        return record if path in self.records else None

    def load(self, record: DiskRecord, device) -> list[tuple] | None:
        """The tensors of a record, checked against their CRCs; None (and the file removed) when they do not match."""
        try:
            with safe_open(str(record.path), framework="pt", device="cpu") as f:
                crcs = json.loads((f.metadata() or {})["crc32"])
                layers = len(crcs) // 2
                kv = []
                for layer in range(layers):
                    pair = []
                    for part in ("k", "v"):
                        tensor = f.get_tensor(f"{part}.{layer}")
                        if _crc(tensor) != crcs[f"{part}.{layer}"]:
                            raise ValueError(f"{part}.{layer} does not match its checksum")
                        pair.append(tensor.to(device))
                    kv.append(tuple(pair))
        except Exception as exc:
            log.warning("removing unusable KV cache file %s (%s: %s)", record.path.name, type(exc).__name__, exc)
            self.remove(record)
            return None
        record.used = time.time()
        try:
            os.utime(record.path)
        except OSError:
            pass
        return kv

    def remove(self, record: DiskRecord) -> None:
        """Delete a record's file."""
        with self._lock:
            self.records.pop(record.path, None)
        record.path.unlink(missing_ok=True)

    def forget(self, conversations: set[str]) -> int:
        """Delete the files of these conversations (deleted for good); returns how many."""
        with self._lock:
            gone = [r for r in self.records.values() if r.conversation in conversations]
        for record in gone:
            self.remove(record)
        return len(gone)

    def _enforce(self) -> None:
        """Past the budget, remove files from the owner holding the most bytes, least recently used first."""
        while True:
            with self._lock:
                held: dict[str, int] = {}
                for record in self.records.values():
                    held[record.owner] = held.get(record.owner, 0) + record.nbytes
                if sum(held.values()) <= self.budget or not held:
                    return
                biggest = max(held, key=held.get)
                victim = min((r for r in self.records.values() if r.owner == biggest), key=lambda r: r.used)
            self.remove(victim)
            self.on_evict(victim)


class Rates:
    """This machine's prefill speed (tokens/s) and disk read speed (bytes/s), measured as they go (an average
    that leans on the latest), for deciding whether a file is worth reading."""

    def __init__(self, prefill_tokens_s: float = 50.0, read_bytes_s: float = 500e6):
        self.prefill_tokens_s, self.read_bytes_s = prefill_tokens_s, read_bytes_s

    def prefilled(self, tokens: int, seconds: float) -> None:
        if tokens >= 16 and seconds > 0:
            self.prefill_tokens_s = 0.7 * self.prefill_tokens_s + 0.3 * tokens / seconds

    def read(self, nbytes: int, seconds: float) -> None:
        if nbytes > 0 and seconds > 0:
            self.read_bytes_s = 0.7 * self.read_bytes_s + 0.3 * nbytes / seconds

    def worth_reading(self, extra_tokens: int, nbytes: int) -> bool:
        """Whether reading `nbytes` is faster than prefilling `extra_tokens`."""
        return extra_tokens / self.prefill_tokens_s > nbytes / self.read_bytes_s + READ_OVERHEAD_S
