"""hibari (``hibari-tts`` on PyPI): Kokoro-82M distilled into one 8 MB int8 ONNX voice.

The wheel is pulled without dependencies into the model cache like any model, so its
package folder is imported from there under a private module name (nothing is
installed). It runs on onnxruntime, not MLX. Its own G2P (lexicon, tagger and an ONNX
out-of-vocabulary model, all inside the wheel) makes the default voice work offline;
its other voices would be downloaded on first use, so only the default one is served.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

DEFAULT_VOICE = "heart"
SPEED_RANGE = (0.5, 2.0)  # what the model was trained for; requests are clamped into it
_import_lock = threading.Lock()


def _import_package(folder: Path) -> ModuleType:
    """Import the wheel's ``hibari`` package folder under a name of our own."""
    name = f"_hibari_{abs(hash(str(folder.resolve())))}"
    with _import_lock:
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"{folder} is not a Python package")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module


@dataclass
class LoadedTTS:
    """A loaded voice: sentence-by-sentence synthesis to float32 samples."""

    engine: Any  # hibari.Hibari
    sample_rate: int
    voices: list[str] = field(default_factory=lambda: [DEFAULT_VOICE])
    weight_dtype: str = "int8"

    def sentences(self, text: str) -> list[str]:
        """The model's own sentence split (each one is synthesized at once)."""
        return list(self.engine.split_sentences(text))

    def synthesize(self, text: str, speed: float = 1.0, seed: int | None = None
                   ) -> Iterator[np.ndarray]:
        """One array of samples per sentence of ``text``, as each is ready."""
        low, high = SPEED_RANGE
        yield from self.engine.stream(text, speed=min(max(speed, low), high), seed=seed)

    def warmup(self) -> None:
        for _ in self.synthesize("Ready."):
            pass


def load_hibari(folder: Path, *, threads: int = 1) -> LoadedTTS:
    """Load the default voice from the unpacked ``hibari`` package ``folder``."""
    module = _import_package(Path(folder))
    model = Path(folder) / "assets" / "hibari.onnx"
    if not model.is_file():
        raise FileNotFoundError(f"{model} is missing: not a hibari-tts package folder")
    engine = module.Hibari(model=str(model), threads=threads)
    return LoadedTTS(engine=engine, sample_rate=int(module.SAMPLE_RATE))
