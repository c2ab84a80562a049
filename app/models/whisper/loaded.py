"""A converted Whisper folder loaded for serving: module, tokenizer and decoding hints."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from app.models.loaded import FLOAT_DTYPES, cpu_backend, resolve_weights
from app.models.whisper.batch import TranscriptionBatch
from app.models.whisper.decoding import DecodeOptions
from app.models.whisper.features import N_FRAMES
from app.models.whisper.model import Whisper, WhisperDims
from app.models.whisper.tokenizer import WhisperTokenizer
from app.models.whisper.transcribe import Transcript, Transcription, transcribe, transcription


@dataclass
class LoadedWhisper:
    model: Whisper
    tokenizer: WhisperTokenizer
    hints: dict[str, Any]  # the CTranslate2 config.json: suppress_ids, lang_ids...
    weight_dtype: str

    @property
    def languages(self) -> list[str]:
        return list(self.tokenizer.languages)

    def options(self, *, task: str, language: str | None, timestamps: bool = True,
                temperature: float = 0.0, word_timestamps: bool = False) -> DecodeOptions:
        """Decoding options: a temperature above 0 starts the fallback ladder there; word
        timestamps use the alignment heads of the model's ``config.json`` if it has them."""
        ladder = [round(t, 1) for t in np.arange(temperature, 1.0 + 1e-6, 0.2)] or [temperature]
        return DecodeOptions(
            task=task, language=language, timestamps=timestamps,
            suppress=self.hints.get("suppress_ids", []),
            suppress_at_begin=self.hints.get("suppress_ids_begin", []),
            temperatures=ladder, word_timestamps=word_timestamps,
            alignment_heads=self.hints.get("alignment_heads") or (),
        )

    @property
    def dtype(self) -> mx.Dtype:
        return FLOAT_DTYPES.get(self.weight_dtype, mx.float32)

    def transcribe(self, audio: np.ndarray, options: DecodeOptions, **kwargs: Any) -> Transcript:
        """Transcribe ``audio`` alone (no batching)."""
        return transcribe(self.model, self.tokenizer, audio, options, dtype=self.dtype, **kwargs)

    def transcription(self, audio: np.ndarray, options: DecodeOptions, **kwargs: Any
                      ) -> Transcription:
        """A transcription for :meth:`open_batch`'s batches (see ``transcribe.transcription``)."""
        return transcription(self.model.dims, self.tokenizer, audio, options, **kwargs)

    def open_batch(self) -> TranscriptionBatch:
        """A batch whose members' decoder steps run together."""
        return TranscriptionBatch(self.model, self.tokenizer, self.dtype)

    def warmup(self) -> None:
        """One encoder pass and a few decoder steps, so the first request is not slower."""
        mel = mx.zeros((1, N_FRAMES, self.model.dims.n_mels), dtype=self.dtype)
        features = self.model.encoder(mel)
        logits, _ = self.model.decoder(mx.array([[self.tokenizer.sot] * 4]), features)
        mx.eval(logits)


def load_whisper(folder: Path, *, weights: str = "auto") -> LoadedWhisper:
    """Load a folder written by :func:`app.models.whisper.convert.convert_ct2`.

    ``weights``: the server's weight policy; ``auto`` and ``quantized`` give float32 on
    the CPU backend (MLX's CPU float16 kernels are slow); ``quantized`` float16 elsewhere.
    """
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    dims = WhisperDims.from_dict(config["dims"])
    mode = resolve_weights(weights)
    if mode not in FLOAT_DTYPES:  # quantized: a model this small gains little from it
        mode = "float32" if cpu_backend() else "float16"
    model = Whisper(dims)
    weights_ = mx.load(str(folder / "model.safetensors"))
    model.load_weights([(k, v.astype(FLOAT_DTYPES[mode])) for k, v in weights_.items()],
                       strict=True)
    mx.eval(model.parameters())
    model.eval()
    tok = WhisperTokenizer(folder / "tokenizer.json", dims.n_vocab)
    return LoadedWhisper(model, tok, config.get("decoding", {}), mode)
