"""CTranslate2's ``model.bin``: read its variables (name, shape, dtype, bytes) with numpy.

The layout (CTranslate2's ``ModelSpec._serialize``, binary version 6, little endian):
``u32 version``, a string (``u16`` length with the NUL, bytes, NUL) naming the spec,
``u32 revision``, ``u32`` variable count, then per variable its name, ``u8`` rank, one
``u32`` per dimension, ``u8`` dtype id, ``u32`` byte count and the raw bytes; then
``u32`` alias count and (alias, target) string pairs. Arrays are views into one
``np.memmap`` of the file, so parsing copies nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# CTranslate2's DataType enum (include/ctranslate2/types.h).
DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
}
BFLOAT16 = 5
SUPPORTED_VERSIONS = (5, 6)


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 model this reader understands."""


@dataclass
class CT2Model:
    spec_name: str
    revision: int
    variables: dict[str, np.ndarray]  # bfloat16 variables come as float32
    aliases: dict[str, str]

    def get(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]


class _Cursor:
    def __init__(self, buf: np.ndarray, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> np.ndarray:
        if self.pos + n > len(self.buf):
            raise CT2FormatError(f"{self.path}: truncated at byte {self.pos} (wanted {n} more)")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)).tobytes())[0]

    def string(self) -> str:
        raw = self.take(self.unpack("H")).tobytes()
        if not raw.endswith(b"\0"):
            raise CT2FormatError(f"{self.path}: a string is not NUL-terminated at {self.pos}")
        return raw[:-1].decode("utf-8")


def read_ct2(path: Path) -> CT2Model:
    """Parse ``path``; the arrays stay views into the memory-mapped file."""
    path = Path(path)
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(buf, path)
    version = cur.unpack("I")
    if version not in SUPPORTED_VERSIONS:
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version} is not supported")
    spec_name = cur.string()
    revision = cur.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(cur.unpack("I")):
        name = cur.string()
        shape = tuple(cur.unpack("I") for _ in range(cur.unpack("B")))
        dtype_id = cur.unpack("B")
        nbytes = cur.unpack("I")
        raw = cur.take(nbytes)
        if dtype_id == BFLOAT16:
            bits = raw.view("<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif dtype_id in DTYPES:
            array = raw.view(DTYPES[dtype_id])
        else:
            raise CT2FormatError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
        if array.size != int(np.prod(shape, dtype=np.int64)):
            raise CT2FormatError(f"{path}: variable {name}: {nbytes} bytes for shape {shape}")
        variables[name] = array.reshape(shape)
    aliases: dict[str, str] = {}
    if cur.pos < len(buf):
        for _ in range(cur.unpack("I")):
            alias = cur.string()
            aliases[alias] = cur.string()
    return CT2Model(spec_name, revision, variables, aliases)
