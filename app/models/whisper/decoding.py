"""Decode one 30 s window: prompt, logit rules, greedy or sampled tokens, fallback.

Per step the logits of the last position come to numpy, where Whisper's rules apply:
suppressed tokens (non-speech symbols and task tokens from the model's ``config.json``),
no blank or end of text as the first token, and the timestamp rules (timestamps come
in pairs, never go back, the first token is a timestamp within the first second, and a
timestamp wins when the timestamps together are likelier than any text token).
:class:`WindowPass` holds one pass's state; :func:`needs_fallback` says when a pass is
retried at a higher temperature: the text repeats itself (gzip compression ratio) or
the model is unsure (average log-probability).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from app.models.whisper.model import LayerCache, Whisper
from app.models.whisper.tokenizer import WhisperTokenizer

MAX_INITIAL_TIMESTAMP_INDEX = 50  # the first timestamp falls within the first second
PROMPT_TOKENS = 223  # half of the text context, minus the <|startofprev|> token


@dataclass
class DecodeOptions:
    task: str = "transcribe"  # or "translate"
    language: str | None = None
    timestamps: bool = True
    sample_len: int = 224
    suppress: Sequence[int] = ()  # tokens never sampled
    suppress_at_begin: Sequence[int] = ()  # tokens never sampled first
    temperatures: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    seed: int | None = None
    word_timestamps: bool = False
    alignment_heads: Sequence[Sequence[int]] = ()  # (layer, head); empty: see words.py


@dataclass
class WindowResult:
    tokens: list[int]  # sampled tokens, end of text excluded
    text: str
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float
    prompt_tokens: int = 0
    steps: int = field(default=0, repr=False)


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def log_softmax(x: np.ndarray) -> np.ndarray:
    top = np.max(x)
    return x - top - np.log(np.sum(np.exp(x - top)))


def prompt_tokens(tok: WhisperTokenizer, previous: Sequence[int], options: DecodeOptions
                  ) -> tuple[list[int], int]:
    """The decoder's prompt for a window and the index of its start-of-transcript token."""
    prefix: list[int] = []
    if previous:
        prefix = [tok.sot_prev, *list(previous)[-PROMPT_TOKENS:]]
    sot = tok.sot_sequence(options.language, options.task, options.timestamps)
    return prefix + sot, len(prefix)


class LogitRules:
    """Whisper's per-step logit rules for one sequence (see the module docstring)."""

    def __init__(self, tok: WhisperTokenizer, options: DecodeOptions, n_vocab: int) -> None:
        self.tok = tok
        self.timestamps = options.timestamps
        self.suppress = np.zeros(n_vocab, dtype=bool)
        self.suppress[[t for t in options.suppress if 0 <= t < n_vocab]] = True
        self.suppress[tok.no_timestamps] = True
        if not options.timestamps:
            self.suppress[tok.timestamp_begin :] = True
        self.begin = list(options.suppress_at_begin) or [tok.encode(" ")[0], tok.eot]

    def apply(self, logits: np.ndarray, sampled: list[int]) -> np.ndarray:
        logits = np.where(self.suppress, -np.inf, logits).astype(np.float32)
        if not sampled:
            logits[self.begin] = -np.inf
        if self.timestamps:
            self._timestamp_rules(logits, sampled)
        return logits

    def _timestamp_rules(self, logits: np.ndarray, sampled: list[int]) -> None:
        begin, eot = self.tok.timestamp_begin, self.tok.eot
        last = len(sampled) >= 1 and sampled[-1] >= begin
        penultimate = len(sampled) < 2 or sampled[-2] >= begin
        if last:
            if penultimate:  # a pair just closed: text (or the end) comes next
                logits[begin:] = -np.inf
            else:  # an open timestamp must be closed: no text
                logits[:eot] = -np.inf
        stamps = [t for t in sampled if t >= begin]
        if stamps:  # timestamps never go back (and a closing one may repeat the opening)
            floor = stamps[-1] if last and not penultimate else stamps[-1] + 1
            logits[begin:floor] = -np.inf
        if not sampled:
            logits[:begin] = -np.inf
            logits[begin + MAX_INITIAL_TIMESTAMP_INDEX + 1 :] = -np.inf
        logprobs = log_softmax(logits)
        stamp_mass = np.logaddexp.reduce(logprobs[begin:])
        if stamp_mass > np.max(logprobs[:begin]):
            logits[:begin] = -np.inf


class WindowPass:
    """One decoding pass over a window at one temperature, fed one step's logits at a time.

    The model calls are the driver's (:func:`decode_window` alone, or a batch of rows in
    :mod:`app.models.whisper.batch`), so every driver applies the same rules and sampling.
    """

    def __init__(self, tok: WhisperTokenizer, options: DecodeOptions, previous: Sequence[int],
                 temperature: float, rng: np.random.Generator, n_vocab: int, n_text_ctx: int
                 ) -> None:
        self.tok, self.temperature, self.rng = tok, temperature, rng
        self.prompt, self.sot_index = prompt_tokens(tok, previous, options)
        self.rules = LogitRules(tok, options, n_vocab)
        self.limit = min(options.sample_len, n_text_ctx - len(self.prompt))
        self.sampled: list[int] = []
        self.sum_logprob = 0.0
        self.no_speech = 0.0

    def start(self, sot_logits: np.ndarray, last_logits: np.ndarray) -> int | None:
        """After the prompt's pass: the first token to feed (None: the pass is over)."""
        self.no_speech = float(np.exp(log_softmax(sot_logits))[self.tok.no_speech])
        return self.advance(last_logits)

    def advance(self, logits: np.ndarray) -> int | None:
        """The next token to feed after this step's ``logits`` (None: the pass is over)."""
        if len(self.sampled) >= self.limit:
            return None
        filtered = self.rules.apply(logits, self.sampled)
        logprobs = log_softmax(filtered)
        if self.temperature == 0.0:
            token = int(np.argmax(filtered))
        else:
            probs = np.exp(log_softmax(filtered / self.temperature))
            token = int(self.rng.choice(len(probs), p=probs / probs.sum()))
        self.sum_logprob += float(logprobs[token])
        if token == self.tok.eot:
            return None
        self.sampled.append(token)
        return token

    def result(self) -> WindowResult:
        text = self.tok.decode(self.sampled)
        return WindowResult(
            tokens=self.sampled, text=text,
            avg_logprob=self.sum_logprob / (len(self.sampled) + 1),
            no_speech_prob=self.no_speech, temperature=self.temperature,
            compression_ratio=compression_ratio(text), prompt_tokens=len(self.prompt),
            steps=len(self.sampled) + 1,
        )


def last_logits(logits: mx.array, index: int = -1) -> np.ndarray:
    """Row 0's logits at ``index`` as float32 numpy."""
    return np.array(logits[0, index].astype(mx.float32))


def decode_window(model: Whisper, features: mx.array, window: WindowPass) -> WindowResult:
    """Run ``window`` alone over a window's encoded ``features`` (1, frames, state)."""
    logits, cache = model.decoder(mx.array([window.prompt]), features)
    token = window.start(last_logits(logits, window.sot_index), last_logits(logits))
    cache_: list[LayerCache] = cache
    while token is not None:
        logits, cache_ = model.decoder(mx.array([[token]]), features, cache_)
        token = window.advance(last_logits(logits))
    return window.result()


def needs_fallback(result: WindowResult, options: DecodeOptions) -> bool:
    """Repetitive or unsure text, unless the window is silence anyway."""
    if (options.compression_ratio_threshold is not None
            and result.compression_ratio > options.compression_ratio_threshold):
        return True
    unsure = (options.logprob_threshold is not None
              and result.avg_logprob < options.logprob_threshold)
    silent = (options.no_speech_threshold is not None
              and result.no_speech_prob > options.no_speech_threshold)
    return unsure and not silent
