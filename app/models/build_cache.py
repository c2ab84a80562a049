"""Build a folder once into the model cache: under a file lock, staged, published atomically.

Conversions (a CTranslate2 Whisper into MLX weights, a GGUF into an mlx-lm directory) are
slow and their results never change for the same input, so the first load builds them
into ``<root>/<key>/`` and later loads, in this or any other process, reuse the folder.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_once(
    root: Path,
    key: str,
    build: Callable[[Path], None],
    complete: Callable[[Path], bool],
) -> Path:
    """``root/key``, running ``build(staging)`` first unless ``complete`` says it is done.

    ``build`` writes everything into the empty folder it is given, including whatever
    ``complete`` checks; the folder replaces any partial earlier one only once built.
    """
    final = Path(root) / key
    if complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same key
        if complete(final):
            return final
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=".build-") as tmp:
            staging = Path(tmp) / "out"
            staging.mkdir()
            build(staging)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
    return final
