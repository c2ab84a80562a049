"""MLX Whisper on a tiny random model: CTranslate2 parsing, conversion into the cache,
features against faster-whisper's, the logit and timestamp rules, and long-form decoding."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from app.models.whisper.convert import cached_whisper_dir, converted_whisper_dir
from app.models.whisper.ct2 import CT2FormatError, read_ct2
from app.models.whisper.decoding import DecodeOptions, LogitRules, compression_ratio
from app.models.whisper.features import log_mel_spectrogram, mel_filters
from app.models.whisper.languages import language_code, language_name
from app.models.whisper.loaded import load_whisper
from app.models.whisper.tokenizer import WhisperTokenizer
from app.models.whisper.transcribe import _split_segments
from tests.unit.tiny_whisper import D, build_tiny_whisper, tiny_variables, write_ct2

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "whisper_reference.json"
DIGEST = "ab" * 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("whisper")
    source = build_tiny_whisper(root / "src")
    folder = converted_whisper_dir(source / "model.bin", source, root / "cache", DIGEST)
    return source, root / "cache", load_whisper(folder)


def test_ct2_file_is_parsed_with_its_shapes_dtypes_and_aliases(tmp_path):
    variables = tiny_variables()
    write_ct2(tmp_path / "model.bin", variables, {"decoder/projection/weight":
                                                  "decoder/embeddings/weight"})
    model = read_ct2(tmp_path / "model.bin")
    assert model.spec_name == "WhisperSpec" and model.revision == 3
    assert set(model.variables) == set(variables)
    for name, array in variables.items():
        assert model.variables[name].dtype == array.dtype
        np.testing.assert_array_equal(model.variables[name], array)
    np.testing.assert_array_equal(model.get("decoder/projection/weight"),
                                  variables["decoder/embeddings/weight"])


def test_ct2_errors_name_the_problem(tmp_path):
    path = tmp_path / "model.bin"
    write_ct2(path, tiny_variables(), {})
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2(path)
    write_ct2(path, tiny_variables(), {}, version=2)
    with pytest.raises(CT2FormatError, match="version 2"):
        read_ct2(path)
    path.write_bytes(struct.pack("<I", 6) + b"\x05\x00abc")
    with pytest.raises(CT2FormatError):
        read_ct2(path)


def test_conversion_splits_fused_projections_and_transposes_convolutions(tiny):
    source, _, loaded = tiny
    v = tiny_variables()
    block = loaded.model.encoder.blocks[0]
    qkv = v["encoder/layer_0/self_attention/linear_0/weight"].astype(np.float32)
    np.testing.assert_array_equal(np.array(block.attn.query.weight), qkv[:D])
    np.testing.assert_array_equal(np.array(block.attn.key.weight), qkv[D : 2 * D])
    np.testing.assert_array_equal(np.array(block.attn.value.weight), qkv[2 * D :])
    kv = v["decoder/layer_0/attention/linear_1/bias"].astype(np.float32)
    cross = loaded.model.decoder.blocks[0].cross_attn
    np.testing.assert_array_equal(np.array(cross.value.bias), kv[D:])
    conv = v["encoder/conv1/weight"].astype(np.float32)  # (out, in, width)
    np.testing.assert_array_equal(np.array(loaded.model.encoder.conv1.weight),
                                  conv.transpose(0, 2, 1))
    gamma = v["decoder/layer_norm/gamma"].astype(np.float32)
    np.testing.assert_array_equal(np.array(loaded.model.decoder.ln.weight), gamma)
    assert loaded.weight_dtype == "float32"


def test_conversion_is_cached_and_reused(tiny, monkeypatch):
    source, cache, _ = tiny
    folder = cached_whisper_dir(cache, DIGEST)
    assert folder is not None
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["dims"]["n_text_state"] == D and config["decoding"]["suppress_ids"]

    def refuse(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr("app.models.whisper.convert.convert_ct2", refuse)
    assert converted_whisper_dir(source / "model.bin", source, cache, DIGEST) == folder
    assert cached_whisper_dir(cache, "cd" * 32) is None


def test_features_match_faster_whisper():
    reference = json.loads(FIXTURE.read_text())["features"]
    filters = mel_filters(80)
    np.testing.assert_allclose(filters.sum(1), reference["filter_row_sums"], atol=1e-6)
    assert filters.argmax(1).tolist() == reference["filter_peaks"]
    t = np.arange(16000 * 3) / 16000
    chirp = (0.5 * np.sin(2 * np.pi * (100 * t + 1300 * t**2))).astype(np.float32)
    mel = log_mel_spectrogram(chirp, 80)
    assert mel.shape == (80, 300)
    np.testing.assert_allclose(mel.mean(1), reference["chirp_mel_band_means"], atol=1e-5)
    np.testing.assert_allclose(mel.mean(0)[::10], reference["chirp_mel_frame_means"], atol=1e-5)


def test_silent_blocks_take_the_floor_exactly():
    audio = np.zeros(16000 * 70, dtype=np.float32)
    audio[16000 * 40 : 16000 * 41] = 0.3
    mel = log_mel_spectrogram(audio, 80)
    assert mel.shape == (80, 7000)
    assert np.all(mel[:, :3000] == mel.min()) and mel.max() > mel.min()


def test_tokenizer_finds_whisper_special_tokens(tiny):
    tok = tiny[2].tokenizer
    assert tok.languages == {"en": 258, "de": 259}
    assert tok.timestamp_begin == tok.no_timestamps + 1
    assert tok.sot_sequence("de", "translate", False) == [tok.sot, 259, tok.translate,
                                                          tok.no_timestamps]
    assert tok.decode(tok.encode(" Grüß dich") + [tok.eot, tok.timestamp_begin]) == " Grüß dich"


def test_timestamp_rules(tiny):
    tok: WhisperTokenizer = tiny[2].tokenizer
    rules = LogitRules(tok, DecodeOptions(suppress=[tok.sot]), tiny[2].model.dims.n_vocab)
    begin = tok.timestamp_begin
    flat = np.zeros(tiny[2].model.dims.n_vocab, dtype=np.float32)
    first = rules.apply(flat, [])
    allowed = np.flatnonzero(np.isfinite(first))
    assert allowed.min() == begin and allowed.max() == begin + 50  # a timestamp, <= 1 s
    started = rules.apply(flat, [begin + 10])  # the opening stamp: text comes next
    assert np.isfinite(started[40]) and not np.isfinite(started[begin:]).any()
    opened = rules.apply(flat, [begin, 40, begin + 10])  # a pair to close: no text, no going back
    assert not np.isfinite(opened[:tok.eot]).any()
    assert not np.isfinite(opened[begin:begin + 10]).any() and np.isfinite(opened[begin + 10])
    closed = rules.apply(flat, [begin + 10, 40, begin + 20, begin + 20])
    assert not np.isfinite(closed[begin:]).any()  # after a pair: text or the end
    assert np.isneginf(rules.apply(flat, [begin + 10, 40])[tok.sot])
    stamps_win = flat.copy()
    stamps_win[begin:] = 5.0
    assert not np.isfinite(rules.apply(stamps_win, [begin, 40])[:begin]).any()


def test_segments_follow_timestamp_pairs(tiny):
    tok = tiny[2].tokenizer
    b = tok.timestamp_begin
    text = tok.encode(" hi")
    pieces, advance = _split_segments([b, *text, b + 50, b + 50, *text, b + 100], tok, 30.0, 30)
    assert [(s, e) for s, e, _ in pieces] == [(30.0, 31.0), (31.0, 32.0)]
    assert advance is None  # ended on a single timestamp: the whole window is done
    pieces, advance = _split_segments([b, *text, b + 50, b + 50, *text], tok, 0.0, 30)
    assert len(pieces) == 1 and advance == 100  # resume at the last complete pair (1 s)
    pieces, advance = _split_segments([*text], tok, 0.0, 12.5)
    assert pieces == [(0.0, 12.5, text)] and advance is None


def test_long_audio_is_decoded_window_by_window_and_silence_is_skipped(tiny):
    loaded = tiny[2]
    options = loaded.options(task="transcribe", language="en")
    options.temperatures, options.sample_len = (0.0,), 12
    noise = (np.random.default_rng(0).standard_normal(16000 * 70) * 0.1).astype(np.float32)
    noise[: 16000 * 30] = 0.0  # the first window is digital silence
    got = []
    result = loaded.transcribe(noise, options, on_segment=got.append)
    assert result.duration == 70.0 and result.language == "en"
    assert 2 <= result.windows <= 4  # the silent window never reached the model
    assert all(s.start >= 30.0 for s in result.segments) and got == result.segments
    silent = loaded.transcribe(np.zeros(16000 * 600, np.float32), options)
    assert silent.windows == 0 and silent.text == "" and silent.segments == []


def test_language_detection_and_names(tiny):
    loaded = tiny[2]
    options = loaded.options(task="transcribe", language=None)
    options.temperatures, options.sample_len = (0.0,), 4
    result = loaded.transcribe(np.full(16000, 0.1, np.float32), options)
    assert result.language in ("en", "de")
    assert language_code("English", loaded.languages) == "en"
    assert language_code("de-AT", loaded.languages) == "de"
    assert language_code("fr", loaded.languages) is None
    assert language_name("de") == "german"


def test_temperature_ladder_and_compression_ratio(tiny):
    loaded = tiny[2]
    assert list(loaded.options(task="transcribe", language="en").temperatures) == [
        0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert list(loaded.options(task="transcribe", language="en", temperature=0.5
                               ).temperatures) == [0.5, 0.7, 0.9]
    assert compression_ratio("the same words " * 40) > 2.4 > compression_ratio(
        "A quick brown fox jumps over the lazy dog.")


def test_decoder_cache_matches_a_full_pass(tiny):
    model = tiny[2].model
    features = model.encoder(mx.zeros((1, 3000, 80)))
    tokens = mx.array([[257, 258, 261, 40, 41, 42]])
    full, _ = model.decoder(tokens, features)
    head, cache = model.decoder(tokens[:, :4], features)
    tail, _ = model.decoder(tokens[:, 4:], features, cache)
    np.testing.assert_allclose(np.array(tail[0]), np.array(full[0, 4:]), atol=1e-4)
