"""Whisper's tokenizer from the ``tokenizer.json`` shipped with the weights.

Whisper's special tokens follow the text vocabulary in a fixed order: end of text, start
of transcript, one token per language (``<|en|>``...), ``<|translate|>``,
``<|transcribe|>``, ``<|startoflm|>``, ``<|startofprev|>``, ``<|nospeech|>`` (older
vocabularies: ``<|nocaptions|>``), ``<|notimestamps|>``, then one timestamp token per
20 ms (``<|0.00|>``...); they are looked up by name here, never by number.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer

_LANGUAGE = re.compile(r"^<\|([a-z]{2,3}(?:_[a-z]+)?|haw|yue)\|>$")
TIME_PRECISION = 0.02  # seconds per timestamp token


class WhisperTokenizer:
    def __init__(self, path: Path, n_vocab: int) -> None:
        self.tokenizer = Tokenizer.from_file(str(path))
        self.n_vocab = n_vocab
        self.eot = self._id("<|endoftext|>")
        self.sot = self._id("<|startoftranscript|>")
        self.translate = self._id("<|translate|>")
        self.transcribe = self._id("<|transcribe|>")
        self.sot_prev = self._id("<|startofprev|>")
        self.no_speech = self._id("<|nospeech|>", "<|nocaptions|>")
        self.no_timestamps = self._id("<|notimestamps|>")
        self.timestamp_begin = self.no_timestamps + 1

    def _id(self, *names: str) -> int:
        for name in names:
            token = self.tokenizer.token_to_id(name)
            if token is not None:
                return token
        raise ValueError(f"the Whisper tokenizer has no {names[0]} token")

    @cached_property
    def languages(self) -> dict[str, int]:
        """Language code -> token id, in the model's order."""
        out: dict[str, int] = {}
        for token in range(self.sot + 1, self.translate):
            match = _LANGUAGE.match(self.tokenizer.id_to_token(token) or "")
            if match:
                out[match.group(1)] = token
        return out

    def sot_sequence(self, language: str | None, task: str, timestamps: bool) -> list[int]:
        seq = [self.sot]
        if language is not None:
            seq.append(self.languages[language])
        seq.append(self.translate if task == "translate" else self.transcribe)
        if not timestamps:
            seq.append(self.no_timestamps)
        return seq

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: list[int]) -> str:
        """Text of the text tokens among ``tokens`` (special and timestamp tokens dropped)."""
        return self.tokenizer.decode([t for t in tokens if t < self.eot],
                                     skip_special_tokens=False)
