"""Decode one 30 s window: prompt, logit rules, greedy or sampled tokens, fallback.

Per step the logits of the last position come to numpy, where Whisper's rules apply:
suppressed tokens (non-speech symbols and task tokens from the model's ``config.json``),
no blank or end of text as the first token, and the timestamp rules (timestamps come
in pairs, never go back, the first token is a timestamp within the first second, and a
timestamp wins when the timestamps together are likelier than any text token).
:func:`decode_with_fallback` retries at higher temperatures when the text repeats itself
(gzip compression ratio) or the model is unsure (average log-probability).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
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


def decode_window(
    model: Whisper,
    tok: WhisperTokenizer,
    features: mx.array,
    previous: Sequence[int],
    options: DecodeOptions,
    temperature: float,
    rng: np.random.Generator,
    on_token: Callable[[int], None] | None = None,
) -> WindowResult:
    """One pass over a window's encoded ``features`` (1, frames, state) at ``temperature``."""
    prompt, sot_index = prompt_tokens(tok, previous, options)
    rules = LogitRules(tok, options, model.dims.n_vocab)
    limit = min(options.sample_len, model.dims.n_text_ctx - len(prompt))
    logits, cache = model.decoder(mx.array([prompt]), features)
    first = logits[0, sot_index].astype(mx.float32)
    no_speech = float(mx.softmax(first)[tok.no_speech].item())
    step_logits = logits[0, -1]
    sampled: list[int] = []
    sum_logprob = 0.0
    cache_: list[LayerCache] = cache
    while len(sampled) < limit:
        filtered = rules.apply(np.array(step_logits.astype(mx.float32)), sampled)
        logprobs = log_softmax(filtered)
        if temperature == 0.0:
            token = int(np.argmax(filtered))
        else:
            probs = np.exp(log_softmax(filtered / temperature))
            token = int(rng.choice(len(probs), p=probs / probs.sum()))
        sum_logprob += float(logprobs[token])
        if token == tok.eot:
            break
        sampled.append(token)
        if on_token is not None:
            on_token(token)
        logits, cache_ = model.decoder(mx.array([[token]]), features, cache_)
        step_logits = logits[0, -1]
    text = tok.decode(sampled)
    return WindowResult(
        tokens=sampled, text=text, avg_logprob=sum_logprob / (len(sampled) + 1),
        no_speech_prob=no_speech, temperature=temperature,
        compression_ratio=compression_ratio(text), prompt_tokens=len(prompt),
        steps=len(sampled) + 1,
    )


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


def decode_with_fallback(
    model: Whisper,
    tok: WhisperTokenizer,
    features: mx.array,
    previous: Sequence[int],
    options: DecodeOptions,
    rng: np.random.Generator,
) -> WindowResult:
    """The first temperature whose result needs no fallback (else the last one tried)."""
    result: WindowResult | None = None
    for temperature in options.temperatures:
        result = decode_window(model, tok, features, previous, options, temperature, rng)
        if not needs_fallback(result, options):
            break
    assert result is not None
    return result
