"""Batched Whisper decoding on the tiny random model: transcripts equal to decoding alone
(greedy and seeded sampling, members joining mid-way, prompts and windows of different
lengths, word timestamps), padded rows see exactly their own keys, and a failing member ends alone.

Tokens, text and timestamps must be identical; log-probabilities may differ in the 8th
digit, because OpenBLAS multiplies a (rows, d) batch with other kernels than one row
(with the reference BLAS they are bit-identical too).
"""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest

from app.models.whisper.batch import TranscriptionBatch
from app.models.whisper.convert import converted_whisper_dir
from app.models.whisper.loaded import load_whisper
from app.models.whisper.rows import DecoderRows
from tests.unit.tiny_whisper import build_tiny_whisper


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("whisper-batch")
    source = build_tiny_whisper(root / "src")
    return load_whisper(converted_whisper_dir(source / "model.bin", source, root / "cache",
                                              "ef" * 32))


def _clips() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [(rng.standard_normal(16000 * s) * 0.1).astype(np.float32) for s in (5, 40, 12, 65)]


PROMPTS = [None, "hello there", None, "a much longer prompt " * 3]


def _options(loaded, i: int, greedy: bool):
    options = loaded.options(task="transcribe", language="en" if i % 2 else None,
                             word_timestamps=i % 2 == 1)
    options.sample_len, options.seed = 16 + 5 * i, i
    if greedy:
        options.temperatures = (0.0,)
    return options


def _run_batch(loaded, jobs, join_every: int = 3):
    """Members join one by one, ``join_every`` steps apart; their results in order."""
    batch = TranscriptionBatch(loaded.model, loaded.tokenizer)
    index: dict[object, int] = {}
    results: dict[int, object] = {}
    pending = list(enumerate(jobs))
    steps = 0
    while pending or len(batch):
        if pending and steps % join_every == 0:
            i, job = pending.pop(0)
            index[batch.add(job)] = i
        for member, value, error in batch.step():
            assert error is None, error
            results[index[member]] = value
        steps += 1
    return [results[i] for i in range(len(jobs))], batch


def assert_same(got, want) -> None:
    """Equal transcripts, up to the last bits of the log-probabilities."""
    loose = ("avg_logprob", "no_speech_prob")
    assert len(got.segments) == len(want.segments)
    for a, b in zip(got.segments, want.segments, strict=True):
        assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-6)
        assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=1e-6)
        assert dataclasses.replace(a, **{k: 0.0 for k in loose}) == dataclasses.replace(
            b, **{k: 0.0 for k in loose})
    assert dataclasses.replace(got, segments=[]) == dataclasses.replace(want, segments=[])


@pytest.mark.parametrize("greedy", [True, False])
def test_batched_transcripts_equal_decoding_alone(loaded, greedy):
    clips = _clips()
    alone = [loaded.transcribe(a, _options(loaded, i, greedy), prompt=p)
             for i, (a, p) in enumerate(zip(clips, PROMPTS, strict=True))]
    jobs = [loaded.transcription(a, _options(loaded, i, greedy), prompt=p)
            for i, (a, p) in enumerate(zip(clips, PROMPTS, strict=True))]
    together, batch = _run_batch(loaded, jobs)
    for got, want in zip(together, alone, strict=True):
        assert_same(got, want)  # tokens, text, timestamps, languages, log-probs
    assert sum(t.windows for t in alone) >= 7 and all(t.segments for t in alone)
    assert any(s.words for s in alone[1].segments)  # word timestamps ran in the batch too
    assert batch.max_rows == 4 and batch.row_steps > 1.5 * batch.steps  # steps were shared


def test_padded_rows_see_only_their_own_keys(loaded):
    model = loaded.model
    features = model.encoder(mx.array(np.random.default_rng(0).standard_normal(
        (2, 3000, 80)).astype(np.float32)))
    prompts = [[257, 258, 261], [257, 258, 261, 40, 41, 42, 43]]
    rows = DecoderRows(model)
    alone = []
    for i, prompt in enumerate(prompts):
        _, cache = model.decoder(mx.array([prompt]), features[i : i + 1])
        rows.add(i, cache, len(prompt))
        logits, _ = model.decoder(mx.array([prompt + [50]]), features[i : i + 1])
        alone.append(np.array(logits[0, -1]))
    assert rows.width == 7
    np.testing.assert_allclose(rows.step([50, 50]), np.stack(alone), atol=1e-5)
    rows.remove({1})  # the long row leaves: the short one's padding is cut
    assert rows.width == 4 and rows.lengths == [4]
    logits, _ = model.decoder(mx.array([prompts[0] + [50, 60]]), features[:1])
    np.testing.assert_allclose(rows.step([60])[0], np.array(logits[0, -1]), atol=1e-5)


def test_a_failing_member_ends_alone(loaded):
    clips = _clips()[:2]
    boom = RuntimeError("caller left")

    def leave(segment):
        raise boom

    jobs = [loaded.transcription(clips[0], _options(loaded, 0, True), on_segment=leave),
            loaded.transcription(clips[1], _options(loaded, 1, True))]
    batch = TranscriptionBatch(loaded.model, loaded.tokenizer)
    first, second = batch.add(jobs[0]), batch.add(jobs[1])
    ended = {}
    while len(batch):
        ended.update({m: (v, e) for m, v, e in batch.step()})
    assert ended[first] == (None, boom)
    assert ended[second][1] is None
    assert_same(ended[second][0], loaded.transcribe(clips[1], _options(loaded, 1, True)))


def test_silence_ends_at_once_in_a_batch(loaded):
    batch = TranscriptionBatch(loaded.model, loaded.tokenizer)
    options = _options(loaded, 0, True)
    member = batch.add(loaded.transcription(np.zeros(16000 * 600, np.float32), options))
    [(ended, value, error)] = batch.step()
    assert ended is member and error is None and len(batch) == 0
    assert value.text == "" and value.windows == 0 and value.duration == 600.0


def test_a_member_dropped_before_its_first_step_is_never_reported(loaded):
    batch = TranscriptionBatch(loaded.model, loaded.tokenizer)
    silent = batch.add(loaded.transcription(np.zeros(16000, np.float32), _options(loaded, 0, True)))
    batch.drop(silent)  # its caller left before the worker stepped
    assert batch.step() == [] and len(batch) == 0
