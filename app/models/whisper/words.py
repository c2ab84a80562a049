"""Word timestamps from cross-attention, the way OpenAI's Whisper finds them.

The window's text is run once more through the decoder (no timestamps, no prompt) and
the cross-attention logits of the alignment heads are read: heads known to follow the
audio. faster-whisper's ``config.json`` lists them per model (``alignment_heads``: for
base the same eight (layer, head) pairs that openai-whisper publishes); without that
list every head of the decoder's second half is used, as openai-whisper does. Per head
the weights are a softmax over the window's frames, standardised over the tokens and
median-filtered over time (7 frames); their mean is a tokens × frames similarity, and
dynamic time warping finds the monotonic path through it. A token starts where the
path first reaches its row; a word (tokens grouped at spaces, or at whole characters
in languages written without spaces) runs from its first token's start to the next
word's. Punctuation joins its neighbour, over-long words at sentence ends are cut to
twice the median word length, and each segment's bounds are reconciled with its words.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import mlx.core as mx
import numpy as np

from app.models.whisper.model import Whisper, WhisperDims
from app.models.whisper.tokenizer import WhisperTokenizer

TOKENS_PER_SECOND = 50  # encoder positions (20 ms) per second
MEDIAN_WIDTH = 7
PREPEND = "\"'“¿([{-"
APPEND = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END = ".。!！?？"
NO_SPACES = {"zh", "ja", "th", "lo", "my", "yue"}


@dataclass
class Word:
    word: str
    start: float
    end: float
    tokens: list[int] = field(default_factory=list, repr=False)


def alignment_heads(dims: WhisperDims, listed: Sequence[Sequence[int]] | None
                    ) -> list[tuple[int, int]]:
    """``listed`` (layer, head) pairs within the model, else the second half's heads."""
    heads = [(int(layer), int(head)) for layer, head in listed or ()
             if 0 <= int(layer) < dims.n_text_layer and 0 <= int(head) < dims.n_text_head]
    return heads or [(layer, head) for layer in range(dims.n_text_layer // 2, dims.n_text_layer)
                     for head in range(dims.n_text_head)]


def attention_weights(model: Whisper, features: mx.array, tokens: list[int],
                      heads: Sequence[tuple[int, int]]) -> np.ndarray:
    """The alignment heads' cross-attention logits for ``tokens``: (heads, tokens, frames)."""
    logits: list[mx.array] = []
    model.decoder(mx.array([tokens]), features, cross_qk=logits)
    return np.stack([np.array(logits[layer][0, head]) for layer, head in heads])


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over the last axis in windows of ``width``, edges reflected."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1), axis=-1)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path through ``cost`` (rows × columns) from the first cell to
    the last: its row and column indices. Cells on one anti-diagonal are filled at once."""
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf)
    total[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)
    for diagonal in range(2, n + m + 1):
        i = np.arange(max(1, diagonal - m), min(n, diagonal - 1) + 1)
        j = diagonal - i
        c0, c1, c2 = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        step = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        total[i, j] = cost[i - 1, j - 1] + np.choose(step, [c0, c1, c2])
        trace[i, j] = step
    trace[0, :], trace[:, 0] = 2, 1
    rows, cols = [], []
    i, j = n, m
    while i > 0 or j > 0:
        rows.append(i - 1)
        cols.append(j - 1)
        move = trace[i, j]
        i, j = (i - 1, j - 1) if move == 0 else (i - 1, j) if move == 1 else (i, j - 1)
    return np.array(rows[::-1]), np.array(cols[::-1])


def split_words(tok: WhisperTokenizer, tokens: list[int], language: str | None
                ) -> list[tuple[str, list[int]]]:
    """``tokens`` grouped into words: whole characters first (a multi-byte character may
    span tokens), then joined at spaces unless the language is written without them."""
    full = tok.decode(tokens)
    pieces: list[tuple[str, list[int]]] = []
    current: list[int] = []
    done = ""  # the text of the groups so far
    for count, token in enumerate(tokens, start=1):
        current.append(token)
        text = tok.decode(tokens[:count])  # "...\ufffd" while a character is unfinished
        if full.startswith(text) or count == len(tokens):
            pieces.append((text[len(done):], current))
            current, done = [], text
    if language in NO_SPACES:
        return pieces
    words: list[tuple[str, list[int]]] = []
    for text, group in pieces:
        if (not words or group[0] >= tok.eot or text.startswith(" ")
                or text.strip() in string.punctuation):
            words.append((text, list(group)))
        else:
            words[-1] = (words[-1][0] + text, words[-1][1] + group)
    return words


def find_words(weights: np.ndarray, n_sot: int, text_tokens: list[int], frames: int,
               tok: WhisperTokenizer, language: str | None) -> list[Word]:
    """Words of ``text_tokens`` with times (seconds into the window) from ``weights`` (the
    heads' logits over ``n_sot`` start tokens, the text and end of text)."""
    frames = min(frames // 2, weights.shape[-1])
    if not text_tokens or frames < 2:
        return []
    w = weights[:, :, :frames].astype(np.float64)
    w = np.exp(w - w.max(axis=-1, keepdims=True))
    w /= w.sum(axis=-1, keepdims=True)
    std = w.std(axis=-2, keepdims=True)
    w = (w - w.mean(axis=-2, keepdims=True)) / np.where(std > 0, std, 1.0)
    matrix = median_filter(w, MEDIAN_WIDTH).mean(axis=0)[n_sot:-1]
    rows, cols = dtw(-matrix)
    jumps = np.diff(rows, prepend=-1).astype(bool)
    token_starts = cols[jumps] / TOKENS_PER_SECOND  # one per row: the start of each token
    groups = split_words(tok, [*text_tokens, tok.eot], language)
    bounds = np.cumsum([0] + [len(g) for _, g in groups[:-1]])
    return [Word(text, float(token_starts[a]), float(token_starts[b]), group)
            for (text, group), a, b in zip(groups[:-1], bounds[:-1], bounds[1:], strict=True)]


def merge_punctuation(words: list[Word]) -> list[Word]:
    """Opening marks join the next word, closing marks the previous one (whose times stay)."""
    reverse: list[Word] = []
    for word in reversed(words):
        if reverse and word.word.startswith(" ") and word.word.strip() and (
                word.word.strip() in PREPEND):
            reverse[-1].word = word.word + reverse[-1].word
            reverse[-1].tokens = word.tokens + reverse[-1].tokens
        else:
            reverse.append(word)
    out: list[Word] = []
    for word in reversed(reverse):
        if out and word.word and word.word in APPEND and not out[-1].word.endswith(" "):
            out[-1].word += word.word
            out[-1].tokens = out[-1].tokens + word.tokens
        else:
            out.append(word)
    return out


def limit_durations(words: list[Word]) -> float:
    """Cut words that run over twice the median length at sentence ends; the median."""
    lengths = np.array([w.end - w.start for w in words])
    lengths = lengths[lengths > 0]
    median = min(0.7, float(np.median(lengths))) if lengths.size else 0.0
    longest = 2 * median
    for prev, word in zip(words, words[1:], strict=False):
        if word.end - word.start > longest > 0:
            if word.word.strip() in SENTENCE_END:
                word.end = word.start + longest
            elif prev.word.strip() in SENTENCE_END:
                word.start = word.end - longest
    return median


class Spanned(Protocol):
    """A segment as :func:`attach_words` sees it."""

    start: float
    end: float
    tokens: list[int]
    words: list[Word]


def attach_words(segments: Sequence[Spanned], words: list[Word], offset: float,
                 median: float, last_end: float) -> float:
    """Hand ``words`` (times within the window at ``offset`` seconds) to the ``segments``
    they were decoded in, by token count; reconcile each segment's bounds with its words
    (a first word that drags on after a pause is shortened, a segment bound far inside a
    word wins). Returns the end of the last speech (``last_end`` if no word)."""
    longest = 2 * median
    index = 0
    for segment in segments:
        taken, mine = 0, []
        while index < len(words) and taken < len(segment.tokens):
            word = words[index]
            if word.word:
                mine.append(Word(word.word, round(offset + word.start, 2),
                                 round(offset + word.end, 2), word.tokens))
            taken += len(word.tokens)
            index += 1
        segment.words = mine
        if not mine:
            continue
        first, last = mine[0], mine[-1]
        if first.end - last_end > 4 * median and (
                first.end - first.start > longest
                or (len(mine) > 1 and mine[1].end - first.start > 2 * longest)):
            if len(mine) > 1 and mine[1].end - mine[1].start > longest:
                first.end = mine[1].start = max(mine[1].end / 2, mine[1].end - longest)
            first.start = max(0.0, first.end - longest)
        if segment.start < first.end and segment.start - 0.5 > first.start:
            first.start = max(0.0, min(first.end - median, segment.start))
        else:
            segment.start = first.start
        if segment.end > last.start and segment.end + 0.5 < last.end:
            last.end = max(last.start + median, segment.end)
        else:
            segment.end = last.end
        for word in mine:
            word.start, word.end = round(word.start, 2), round(word.end, 2)
        segment.start, segment.end = round(segment.start, 3), round(segment.end, 3)
        last_end = segment.end
    return last_end
