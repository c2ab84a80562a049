"""The prefix cache's disk tier: KV caches of prompt prefixes kept across restarts.

Content-addressed: an entry is the KV cache of the first ``k`` tokens of a prompt, ``k`` a
multiple of ``BLOCK``, in ``<root>/<sha256>.safetensors`` where the hash covers the model's
digest, the cache salt (tenant) and those ``k`` token ids. A lookup hashes the prompt's
block prefixes and checks, longest first, which of them the directory holds; no index file
is kept, the directory listing is the index.

SSD wear is bounded twice: a file whose key is already on disk is never written again, and
writes stop for the hour once ``write_bytes_per_hour`` is spent (a token bucket). The tier
holds at most ``max_bytes``; the least recently used files go first. A file that cannot be
read, or that is not ours (another format, model or key), is deleted, never trusted.
Only plain ``KVCache`` layers are stored (rotating and quantized caches stay in RAM only).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import KVCache

log = logging.getLogger(__name__)

BLOCK = 256  # tokens: entries are stored at, and looked up by, multiples of this length
FORMAT = "mlx-server-prefix/1"
_NAME = re.compile(r"^[0-9a-f]{64}\.safetensors$")


@dataclass
class DiskStats:
    writes: int = 0
    written_bytes: int = 0
    loads: int = 0
    skipped_budget: int = 0  # writes refused by the write budget
    deleted_bad: int = 0  # corrupt or foreign files removed
    evictions: int = 0


def _token_bytes(tokens: list[int]) -> bytes:
    return array("i", tokens).tobytes()


class DiskTier:
    """Bounded, write-budgeted store of prefix KV caches for one model."""

    def __init__(
        self, root: Path, model_digest: str, *, max_bytes: int, write_bytes_per_hour: int
    ) -> None:
        self.root = Path(root)
        self.model_digest = model_digest
        self.max_bytes = max_bytes
        self.write_rate = write_bytes_per_hour / 3600.0
        self.write_capacity = float(write_bytes_per_hour)
        self._allowance = self.write_capacity
        self._refilled = time.monotonic()
        self.stats = DiskStats()
        self._files: OrderedDict[str, int] = OrderedDict()  # key -> bytes, oldest first
        self._bytes = 0
        self._scan()

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def entries(self) -> int:
        return len(self._files)

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def _scan(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        found = []
        for path in self.root.iterdir():
            if not _NAME.match(path.name) or not path.is_file():
                self._delete(path)  # leftovers of an interrupted write, or not ours
                continue
            stat = path.stat()
            found.append((stat.st_mtime, path.name[:64], stat.st_size))
        for _, key, size in sorted(found):
            self._files[key] = size
            self._bytes += size
        self._shrink(self.max_bytes)

    def _keys(self, prompt: list[int], salt: str, upto: int) -> list[tuple[int, str]]:
        """(length, key) of every block prefix of ``prompt`` no longer than ``upto``."""
        digest = hashlib.sha256(f"{FORMAT}\0{self.model_digest}\0{salt}\0".encode())
        keys = []
        for end in range(BLOCK, upto + 1, BLOCK):
            digest.update(_token_bytes(prompt[end - BLOCK : end]))
            keys.append((end, digest.copy().hexdigest()))
        return keys

    # ---- lookup ---------------------------------------------------------------
    def may_cover(self, prompt: list[int], salt: str, cached: int) -> bool:
        """Whether a block prefix longer than ``cached`` could be on disk (cheap)."""
        return bool(self._files) and (len(prompt) - 1) // BLOCK * BLOCK > cached

    def load(self, prompt: list[int], salt: str, cached: int) -> tuple[list[Any], list[int]] | None:
        """The longest stored prefix of ``prompt`` longer than ``cached`` (leaving a token to
        feed): (its KV cache, its tokens), or None."""
        for length, key in reversed(self._keys(prompt, salt, len(prompt) - 1)):
            if length <= cached:
                return None
            if key in self._files:
                cache = self._read(key, prompt[:length])
                if cache is not None:
                    return cache, prompt[:length]
        return None

    def _read(self, key: str, tokens: list[int]) -> list[Any] | None:
        path = self._path(key)
        try:
            arrays, meta = mx.load(str(path), return_metadata=True)
            layers = int(meta.get("layers", "-1"))
            if (meta.get("format"), meta.get("model"), meta.get("key")) != (
                FORMAT, self.model_digest, key
            ) or layers <= 0 or arrays["tokens"].tolist() != tokens:
                raise ValueError("not an entry of this model and prompt")
            cache = []
            for i in range(layers):
                layer = KVCache()
                layer.keys, layer.values = arrays[f"{i}.keys"], arrays[f"{i}.values"]
                if layer.keys.shape[2] != len(tokens) or layer.values.shape[2] != len(tokens):
                    raise ValueError("KV length does not match the tokens")
                layer.offset = len(tokens)
                cache.append(layer)
            mx.eval([c.state for c in cache])
        except Exception as exc:  # noqa: BLE001 - a bad file is dropped, never fatal
            log.warning("prefix cache: dropping unreadable entry %s: %s", path.name, exc)
            self.stats.deleted_bad += 1
            self._forget(key)
            return None
        self.stats.loads += 1
        self._files.move_to_end(key)
        try:
            os.utime(path)  # most recently used, also for the next start's order
        except OSError:
            pass
        return cache

    # ---- store ----------------------------------------------------------------
    def save(self, salt: str, tokens: list[int], cache: list[Any]) -> bool:
        """Store the longest block prefix of an entry; False when not written."""
        if not cache or any(type(c) is not KVCache or c.keys is None for c in cache):
            return False
        held = min(len(tokens), min(c.offset for c in cache))
        length = held // BLOCK * BLOCK
        if length < BLOCK:
            return False
        key = self._keys(tokens, salt, length)[-1][1]
        if key in self._files:  # content-addressed: already there, nothing to write
            self._files.move_to_end(key)
            return False
        arrays = {"tokens": mx.array(tokens[:length], dtype=mx.int32)}
        for i, c in enumerate(cache):
            arrays[f"{i}.keys"] = c.keys[..., :length, :]
            arrays[f"{i}.values"] = c.values[..., :length, :]
        size = sum(a.nbytes for a in arrays.values())
        if size > self.max_bytes or not self._spend(size):
            self.stats.skipped_budget += 1
            return False
        meta = {"format": FORMAT, "model": self.model_digest, "key": key,
                "layers": str(len(cache))}
        temp = self.root / f".{key}.{os.getpid()}.tmp.safetensors"
        try:
            mx.save_safetensors(str(temp), arrays, metadata=meta)
            os.replace(temp, self._path(key))
            size = self._path(key).stat().st_size
        except OSError as exc:
            log.warning("prefix cache: could not write %s: %s", key, exc)
            self._delete(temp)
            return False
        self.stats.writes += 1
        self.stats.written_bytes += size
        self._files[key] = size
        self._bytes += size
        self._shrink(self.max_bytes)
        return True

    def _spend(self, size: int) -> bool:
        """Take ``size`` bytes from the write budget if it has them."""
        now = time.monotonic()
        self._allowance = min(
            self.write_capacity, self._allowance + (now - self._refilled) * self.write_rate
        )
        self._refilled = now
        if size > self._allowance:
            return False
        self._allowance -= size
        return True

    def _shrink(self, limit: int) -> None:
        while self._files and self._bytes > limit:
            key = next(iter(self._files))
            self.stats.evictions += 1
            self._forget(key)

    def _forget(self, key: str) -> None:
        self._bytes -= self._files.pop(key, 0)
        self._delete(self._path(key))

    @staticmethod
    def _delete(path: Path) -> None:
        try:
            if path.is_dir() and not path.is_symlink():
                return  # never recurse into something we did not make
            path.unlink(missing_ok=True)
        except OSError:
            pass
