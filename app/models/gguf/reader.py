"""A fast GGUF reader: metadata, tensor directory, and tensors dequantized with ``gguf-py``.

``gguf.GGUFReader`` builds a numpy view per array element, which takes half a minute on
Gemma 3's 262k-token vocabulary; this reader parses the header in one pass (numeric arrays
with ``np.frombuffer``), maps the file, and hands each tensor's raw blocks to
``gguf.quants.dequantize`` (the reference implementation of every GGML block format).

Metadata values are plain Python (ints, floats, strings, lists), the same shape as
:func:`app.models.gguf.loader.plain_metadata` gives, so the tokenizer builders take either.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

Q = GGMLQuantizationType
# Types gguf-py can dequantize (checked against gguf 0.17-0.19; I8..F64 are not weights).
DEQUANT_TYPES = frozenset(
    {
        Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
        Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
        Q.IQ1_S, Q.IQ1_M, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S,
        Q.IQ4_NL, Q.IQ4_XS, Q.TQ1_0, Q.TQ2_0,
    }
)  # fmt: skip

# GGUF metadata value types -> (numpy dtype for arrays, struct format for scalars)
_SCALARS = {0: ("<u1", "<B"), 1: ("<i1", "<b"), 2: ("<u2", "<H"), 3: ("<i2", "<h"),
            4: ("<u4", "<I"), 5: ("<i4", "<i"), 6: ("<f4", "<f"), 7: ("?", "<?"),
            10: ("<u8", "<Q"), 11: ("<i8", "<q"), 12: ("<f8", "<d")}  # fmt: skip
_STRING, _ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (GGUF stores the innermost dimension first)
    kind: GGMLQuantizationType
    offset: int  # from the start of the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return self.kind.name


class GGUFFile:
    """An open GGUF file; use as a context manager or call :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fh = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        try:
            self._buf = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._pos = 0
            self.metadata, self.tensors = self._parse()
        except (struct.error, UnicodeDecodeError, ValueError, OverflowError) as exc:
            self.close()
            raise ValueError(f"{self.path}: not a readable GGUF file ({exc})") from exc

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        buf = getattr(self, "_buf", None)
        if buf is not None:
            try:
                buf.close()
            except BufferError:  # a numpy view still points into it; the GC closes it
                pass
        self._fh.close()

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    # ---- parsing ----------------------------------------------------------------

    def _scalar(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self._buf, self._pos)[0]
        self._pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        size = self._scalar("<Q")
        start, self._pos = self._pos, self._pos + size
        if self._pos > len(self._buf):
            raise ValueError("string runs past the end of the file")
        return self._buf[start : self._pos].decode("utf-8", "replace")

    def _value(self, kind: int) -> Any:
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            item, count = self._scalar("<I"), self._scalar("<Q")
            if item in _SCALARS:
                dtype = np.dtype(_SCALARS[item][0])
                arr = np.frombuffer(self._buf, dtype=dtype, count=count, offset=self._pos)
                self._pos += dtype.itemsize * count
                return arr.tolist()
            return [self._value(item) for _ in range(count)]
        if kind not in _SCALARS:
            raise ValueError(f"unknown metadata value type {kind}")
        return self._scalar(_SCALARS[kind][1])

    def _parse(self) -> tuple[dict[str, Any], list[TensorInfo]]:
        if self._buf[:4] != b"GGUF":
            raise ValueError("bad magic")
        self._pos = 4
        version = self._scalar("<I")
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        n_tensors, n_kv = self._scalar("<Q"), self._scalar("<Q")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            metadata[key] = self._value(self._scalar("<I"))
        raw: list[tuple[str, tuple[int, ...], int, int]] = []
        for _ in range(n_tensors):
            name = self._string()
            dims = [self._scalar("<Q") for _ in range(self._scalar("<I"))]
            raw.append((name, tuple(reversed(dims)), self._scalar("<I"), self._scalar("<Q")))
        align = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        data_start = (self._pos + align - 1) // align * align
        tensors = []
        for name, shape, kind_id, offset in raw:
            try:
                kind = GGMLQuantizationType(kind_id)
            except ValueError as exc:
                raise ValueError(f"tensor {name}: unknown GGML type {kind_id}") from exc
            block, size = GGML_QUANT_SIZES[kind]
            count = int(np.prod(shape)) if shape else 1
            if shape and shape[-1] % block:
                raise ValueError(f"tensor {name}: row {shape[-1]} is not whole {kind.name} blocks")
            start = data_start + offset
            info = TensorInfo(name, shape, kind, start, count // block * size)
            if start + info.nbytes > len(self._buf):
                raise ValueError(f"tensor {name} runs past the end of the file (truncated?)")
            tensors.append(info)
        return metadata, tensors

    # ---- tensor data --------------------------------------------------------------

    def raw(self, info: TensorInfo) -> np.ndarray:
        """The tensor's bytes as uint8 rows: shape ``(*shape[:-1], bytes per row)``."""
        data = np.frombuffer(self._buf, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        rows = info.shape[:-1] if info.shape else ()
        return data.reshape(*rows, -1) if info.shape else data

    def dequantize(self, info: TensorInfo) -> np.ndarray:
        """The tensor as a float32 array of ``info.shape`` (a fresh copy)."""
        if info.kind not in DEQUANT_TYPES:
            raise ValueError(f"{self.path}: tensor {info.name} has type {info.type_name}, "
                             "which cannot be dequantized")
        if info.kind == Q.F32:
            out = self.raw(info).view(np.float32).copy()
        else:
            out = np.asarray(dequantize(self.raw(info), info.kind), dtype=np.float32)
        return out.reshape(info.shape)


def read_gguf_metadata(path: Path) -> tuple[dict[str, Any], list[TensorInfo]]:
    """``(metadata, tensors)`` of a GGUF file without reading any tensor data."""
    with GGUFFile(path) as gf:
        return gf.metadata, gf.tensors
