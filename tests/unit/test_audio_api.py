"""/v1/audio/transcriptions and /translations through a real server on a tiny random
Whisper (registry type ``stt``, a local faster-whisper folder): shapes of every
response format, streaming, limits and bad inputs. The text is noise; the shapes and
statuses are what a client sees."""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
import pytest

from app.config import Settings
from app.lifecycle.registry import ModelRegistry, ModelSpec
from app.main import create_app
from app.models.audio_codec import StreamEncoder
from tests.unit.live_server import live_server
from tests.unit.tiny_whisper import build_tiny_whisper

URL = "/v1/audio/transcriptions"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio-api")
    folder = build_tiny_whisper(root / "tiny-whisper")
    specs = [ModelSpec(id="tiny-whisper", type="stt", source=str(folder),
                       aliases=["whisper-1"])]
    settings = Settings(cache_dir=root / "cache", max_audio_bytes=64 * 1024, preload=False)
    with live_server(create_app(settings, ModelRegistry(specs))) as base, \
            httpx.Client(base_url=base, timeout=120) as http:
        yield http


def _wav(seconds: float = 2.0) -> bytes:
    rng = np.random.default_rng(1)
    encoder = StreamEncoder("wav", 16000)
    return encoder.feed((rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)) \
        + encoder.close()


def _post(client, data: bytes = b"", path: str = URL, **fields):
    files = {"file": ("clip.wav", data)}
    return client.post(path, files=files, data={"model": "whisper-1", "temperature": "0.9",
                                                **fields})


def test_json_and_verbose_json(client):
    body = _post(client, _wav()).json()
    assert isinstance(body["text"], str) and body["model"] == "tiny-whisper"
    assert body["usage"] == {"type": "duration", "seconds": 2.0}
    assert body["htdi"]["model"] == "tiny-whisper"
    verbose = _post(client, _wav(), response_format="verbose_json",
                    **{"timestamp_granularities[]": "segment"}).json()
    assert verbose["task"] == "transcribe" and verbose["duration"] == 2.0
    assert verbose["language"] in ("english", "german")
    for seg in verbose["segments"]:
        assert 0.0 <= seg["start"] <= seg["end"] <= 2.0
        assert set(seg) >= {"id", "seek", "tokens", "temperature", "avg_logprob",
                            "compression_ratio", "no_speech_prob"}


def test_word_timestamps_in_verbose_json(client):
    body = _post(client, _wav(), response_format="verbose_json", temperature="0",
                 **{"timestamp_granularities[]": ["word", "segment"]}).json()
    assert body["segments"], body  # the tiny model's noise still makes segments
    words = body["words"]
    assert words and all(set(w) == {"word", "start", "end"} for w in words)
    ascii_ = re.compile(r"[^ -~]")  # noise bytes: a word may join two segments' halves
    assert ascii_.sub("", "".join(w["word"] for w in words)) == ascii_.sub(
        "", body["text"]).replace(" ", "")
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(0.0 <= w["start"] <= w["end"] <= 2.0 for w in words)


def test_text_srt_vtt(client):
    text = _post(client, _wav(), response_format="text")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert text.headers["x-request-id"]
    vtt = _post(client, _wav(), response_format="vtt")
    assert vtt.text.startswith("WEBVTT\n") and vtt.headers["content-type"].startswith("text/vtt")
    srt = _post(client, _wav(), response_format="srt")
    assert srt.status_code == 200 and "application/x-subrip" in srt.headers["content-type"]


def test_translation_and_stream(client):
    r = _post(client, _wav(), path="/v1/audio/translations", response_format="verbose_json")
    assert r.status_code == 200 and r.json()["task"] == "translate"
    with client.stream("POST", URL, files={"file": ("a.wav", _wav())},
                       data={"model": "whisper-1", "stream": "true", "temperature": "0.9"}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in s.iter_lines() if line.startswith("data: ")]
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert lines[-1] == "data: [DONE]" and events[-1]["type"] == "transcript.text.done"
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    assert "".join(deltas).strip() == events[-1]["text"]


@pytest.mark.parametrize("fields,param,code", [
    ({"response_format": "xml"}, "response_format", None),
    ({"timestamp_granularities[]": "word"}, "timestamp_granularities[]", None),  # json
    ({"timestamp_granularities[]": "char"}, "timestamp_granularities[]", None),
    ({"temperature": "2"}, "temperature", None),
    ({"temperature": "hot"}, "temperature", None),
    ({"language": "xx"}, "language", None),
])
def test_bad_fields(client, fields, param, code):
    r = _post(client, _wav(0.5), **fields)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    if code:
        assert r.json()["error"]["code"] == code


def test_bad_files_and_limits(client):
    missing = client.post(URL, files={"model": (None, "whisper-1")})  # multipart, no file
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    form = client.post(URL, data={"model": "whisper-1"})  # urlencoded: a browser's form post
    assert form.status_code == 415
    text = _post(client, b"hello, I am a text file\n" * 20)
    assert text.status_code == 400 and text.json()["error"]["code"] == "invalid_audio"
    empty = _post(client, b"")
    assert empty.status_code == 200 and empty.json()["text"] == ""
    too_big = _post(client, b"\0" * (70 * 1024))  # over max_audio_bytes, under the body limit
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "file_too_large"
    way_too_big = _post(client, b"\0" * (200 * 1024))  # refused while the body is read
    assert way_too_big.status_code == 413
    unknown = client.post(URL, files={"file": ("a.wav", _wav(0.5))}, data={"model": "nope"})
    assert unknown.status_code == 404
    unversioned = client.post("/audio/transcriptions", files={"file": ("a.wav", b"")},
                              data={"model": "whisper-1"})
    assert unversioned.status_code == 200 and unversioned.json()["text"] == ""
    speech = client.post("/v1/audio/speech", json={"model": "whisper-1", "input": "hi"})
    assert speech.status_code == 400 and "speech" in speech.json()["error"]["message"]


def test_models_list_the_stt_model(client):
    meta = client.get("/v1/models/tiny-whisper").json()["metadata"]
    assert meta["type"] == "stt" and meta["capabilities"] == ["transcriptions", "translations"]
    metrics = client.get("/metrics").text
    assert 'mlx_server_audio_seconds_total{model_name="tiny-whisper",task="transcribe"}' in metrics


def test_concurrent_requests_each_get_their_own_transcript(client):
    """Requests decoded in one batch: each answer belongs to its own upload."""
    from concurrent.futures import ThreadPoolExecutor

    durations = [0.5, 1.5, 1.0, 2.0]  # the upload limit here is 64 KiB
    with ThreadPoolExecutor(len(durations)) as pool:
        replies = list(pool.map(lambda s: _post(client, _wav(s), response_format="verbose_json",
                                                ), durations))
    for seconds, reply in zip(durations, replies, strict=True):
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["duration"] == seconds and "htdi" in body
        assert all(0.0 <= s["start"] <= s["end"] <= seconds for s in body["segments"])
