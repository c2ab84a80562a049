"""Word timestamps' parts on known inputs: DTW, the median filter, grouping tokens into
words, punctuation, and times read from a cross-attention pattern with a known answer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from app.models.whisper.model import WhisperDims
from app.models.whisper.tokenizer import WhisperTokenizer
from app.models.whisper.words import (
    Word,
    alignment_heads,
    attach_words,
    dtw,
    find_words,
    limit_durations,
    median_filter,
    merge_punctuation,
    split_words,
)
from tests.unit.tiny_whisper import N_VOCAB, tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tiny_tokenizer().save(str(path))
    return WhisperTokenizer(path, N_VOCAB)


def _brute_force_dtw(cost):
    """The cheapest monotonic path's cost, trying every path (small matrices only)."""
    n, m = cost.shape
    best = np.inf
    for moves in itertools.product((0, 1, 2), repeat=n + m):
        i = j = 0
        total = cost[0, 0]
        for move in moves:
            if i == n - 1 and j == m - 1:
                break
            di, dj = ((1, 1), (1, 0), (0, 1))[move]
            i, j = i + di, j + dj
            if i >= n or j >= m:
                break
            total += cost[i, j]
        else:
            continue
        if i == n - 1 and j == m - 1:
            best = min(best, total)
    return best


def test_dtw_finds_the_cheapest_monotonic_path():
    rng = np.random.default_rng(0)
    for n, m in ((3, 4), (4, 3), (2, 5)):
        cost = rng.random((n, m))
        rows, cols = dtw(cost)
        assert (rows[0], cols[0]) == (0, 0) and (rows[-1], cols[-1]) == (n - 1, m - 1)
        steps = set(zip(np.diff(rows), np.diff(cols), strict=True))
        assert steps <= {(1, 1), (1, 0), (0, 1)}
        assert cost[rows, cols].sum() == pytest.approx(_brute_force_dtw(cost))


def test_median_filter_matches_a_direct_median():
    x = np.random.default_rng(1).random((2, 3, 20))
    padded = np.pad(x, [(0, 0), (0, 0), (3, 3)], mode="reflect")
    direct = np.stack([np.median(padded[..., i : i + 7], axis=-1) for i in range(20)], -1)
    np.testing.assert_allclose(median_filter(x, 7), direct)


def test_tokens_become_words(tok):
    tokens = tok.encode(" Grüß dich, Welt!")  # byte-level: ü and ß take two tokens each
    words = split_words(tok, [*tokens, tok.eot], "de")
    assert [w for w, _ in words] == [" Grüß", " dich", ",", " Welt", "!", ""]
    assert sum(len(g) for _, g in words) == len(tokens) + 1
    chars = split_words(tok, tok.encode("日本"), "ja")  # no spaces: whole characters
    assert [w for w, _ in chars] == ["日", "本"] and all(len(g) == 3 for _, g in chars)
    merged = merge_punctuation([Word(w, i, i + 1.0, g) for i, (w, g) in enumerate(words[:-1])])
    assert [(w.word, w.start, w.end) for w in merged] == [
        (" Grüß", 0, 1.0), (" dich,", 1, 2.0), (" Welt!", 3, 4.0)]


def test_words_follow_the_attention(tok):
    """Token k attends to frames [20k + 10, 20k + 30): a word starts at (20k + 10) / 50 s of
    its first token k; the path starts at frame 0, so the first word starts there."""
    text = tok.encode(" a b c d")  # one token per character: " a", " b"... are two each
    words = split_words(tok, [*text, tok.eot], "en")
    n_sot, frames = 3, 400
    rows = n_sot + 1 + len(text) + 1
    weights = np.full((2, rows, 1500), -10.0, dtype=np.float32)
    for k in range(len(text) + 1):
        weights[:, n_sot + k, 20 * k + 10 : 20 * k + 30] = 10.0
    found = find_words(weights, n_sot, text, frames, tok, "en")
    assert [w.word for w in found] == [w for w, _ in words[:-1]]
    firsts = np.cumsum([0] + [len(g) for _, g in words[:-2]])
    assert found[0].start == 0.0 and len(found) == 4
    for word, k in zip(found[1:], firsts[1:], strict=True):
        assert word.start == pytest.approx((20 * k + 10) / 50, abs=0.1)
    assert all(a.end == b.start for a, b in zip(found, found[1:], strict=False))


def test_segments_take_their_words_and_bounds():
    class Seg:
        def __init__(self, start, end, tokens):
            self.start, self.end, self.tokens, self.words = start, end, tokens, []

    segments = [Seg(10.0, 12.0, [1, 2, 3]), Seg(12.0, 14.0, [4, 5])]
    words = [Word(" one", 0.1, 0.5, [1]), Word(" two", 0.5, 1.2, [2, 3]),
             Word(" three", 2.1, 2.6, [4]), Word(" four.", 2.6, 3.2, [5])]
    median = limit_durations(words)
    assert median == pytest.approx(0.55)
    end = attach_words(segments, words, 10.0, median, 0.0)
    assert [[w.word for w in s.words] for s in segments] == [[" one", " two"],
                                                             [" three", " four."]]
    assert (segments[0].start, segments[0].end) == (10.1, 11.2)  # bounds from the words
    assert (segments[1].start, segments[1].end, end) == (12.1, 13.2, 13.2)


def test_alignment_heads_from_the_model_config_or_the_second_half():
    dims = WhisperDims(80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6)
    assert alignment_heads(dims, [[3, 1], [5, 6], [9, 0]]) == [(3, 1), (5, 6)]
    assert alignment_heads(dims, None) == [(i, h) for i in (3, 4, 5) for h in range(8)]


def test_invalid_bytes_do_not_swallow_the_words_after_them(tok):
    from tests.unit.tiny_whisper import _bytes_to_unicode

    byte = {b: tok.tokenizer.token_to_id(c) for b, c in _bytes_to_unicode().items()}
    tokens = [byte[0xE2], byte[0x82], *tok.encode("A b"), tok.eot]  # E2 82: never finished
    groups = split_words(tok, tokens, "en")
    assert groups[-1] == ("", [tok.eot]) and groups[-2] == (" b", tok.encode(" b"))
    assert sum(len(g) for _, g in groups) == len(tokens)
