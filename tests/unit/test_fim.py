"""Fill in the middle: /v1/completions ``suffix`` and llama.cpp's ``/infill``, on a tiny
llama whose tokenizer has Qwen2.5-Coder's FIM tokens (and on one without them)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.generation.fim import FillInMiddle, fim_tokens, infill_tokens
from app.lifecycle.registry import ModelRegistry, ModelSpec
from app.main import create_app
from tests.unit.tiny_llama import build_tiny_llama

FIM = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>")
PREFIX, SUFFIX = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def coder(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path):
    coder_dir = build_tiny_llama(tmp_path_factory.mktemp("tiny-coder"), extra_specials=FIM)
    registry = ModelRegistry([
        ModelSpec(id="coder", source=str(coder_dir), family="llama", context_length=1024,
                  aliases=["default"], limits={"max_tokens": 64}, preload=True),
        ModelSpec(id="plain", source=str(tiny_llama_dir), family="llama", context_length=1024,
                  limits={"max_tokens": 64}, preload=True),
    ])
    settings = Settings(cache_dir=tmp_path_factory.mktemp("cache"))
    with TestClient(create_app(settings, registry)) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield client


def _tokenizer(client: TestClient, model: str = "coder"):
    return client.app.state.manager.models[model].loaded.tokenizer


def _greedy(client: TestClient, ids: list[int], max_tokens: int = 6) -> str:
    body = {"model": "coder", "prompt": ids, "max_tokens": max_tokens, "temperature": 0}
    return client.post("/v1/completions", json=body).json()["choices"][0]["text"]


def test_the_prompt_is_prefix_suffix_middle_with_the_models_markers(coder: TestClient):
    tokenizer = _tokenizer(coder)
    markers = fim_tokens(tokenizer)
    assert markers is not None and markers.file_sep is not None
    enc = tokenizer.encode
    ids = infill_tokens(tokenizer, "coder", PREFIX, FillInMiddle(SUFFIX, (("u.py", "x = 1"),)),
                        "suffix")
    assert ids == ([markers.file_sep] + enc("u.py\nx = 1", add_special_tokens=False)
                   + [markers.prefix] + enc(PREFIX, add_special_tokens=False)
                   + [markers.suffix] + enc(SUFFIX, add_special_tokens=False)
                   + [markers.middle])
    # marker text inside the code stays text
    tricky = infill_tokens(tokenizer, "coder", "s = '<|fim_suffix|>'", FillInMiddle(""),
                           "suffix")
    assert tricky.count(markers.suffix) == 1
    assert fim_tokens(_tokenizer(coder, "plain")) is None  # the stock tiny model has none


def test_completions_suffix_fills_in_the_middle(coder: TestClient):
    tokenizer = _tokenizer(coder)
    ids = infill_tokens(tokenizer, "coder", PREFIX, FillInMiddle(SUFFIX), "suffix")
    resp = coder.post("/v1/completions", json={"model": "coder", "prompt": PREFIX,
                                               "suffix": SUFFIX, "max_tokens": 6,
                                               "temperature": 0})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["usage"]["prompt_tokens"] == len(ids)
    assert body["choices"][0]["text"] == _greedy(coder, ids)


def test_infill_route_in_llama_cpp_shape(coder: TestClient):
    tokenizer = _tokenizer(coder)
    fim = FillInMiddle(SUFFIX, (("util.py", "def sub(a, b): ..."),), middle="a")
    ids = infill_tokens(tokenizer, "coder", PREFIX, fim, "input_suffix")
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "prompt": "a",
            "input_extra": [{"filename": "util.py", "text": "def sub(a, b): ..."}],
            "n_predict": 6, "temperature": 0, "cache_prompt": True, "t_max_predict_ms": 500}
    resp = coder.post("/infill", json=body)  # unknown llama.cpp options are ignored
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["content"] == _greedy(coder, ids)
    assert out["stop"] is True and out["tokens_predicted"] == 6
    assert out["tokens_evaluated"] == len(ids) and out["model"] == "coder" and "htdi" in out
    streamed = coder.post("/infill", json={**body, "stream": True})
    lines = [ln[6:] for ln in streamed.text.splitlines() if ln.startswith("data: ")]
    assert "[DONE]" not in lines  # llama.cpp's streams end with the stop: true object
    events = [json.loads(ln) for ln in lines]
    assert all(e["stop"] is False for e in events[:-1]) and events[-1]["stop"] is True
    assert "".join(e["content"] for e in events) == out["content"]
    # the cursor at the very top of an empty file
    empty = coder.post("/infill", json={"input_prefix": "", "input_suffix": "", "n_predict": 2})
    assert empty.status_code == 200, empty.text


def test_models_without_fim_tokens_get_a_clear_400(coder: TestClient):
    resp = coder.post("/v1/completions", json={"model": "plain", "prompt": PREFIX,
                                               "suffix": SUFFIX, "max_tokens": 4})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == "suffix" and "fill-in-the-middle" in error["message"]
    resp = coder.post("/infill", json={"model": "plain", "input_prefix": "x",
                                       "input_suffix": "y"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "input_suffix"
    both = coder.post("/v1/completions", json={"model": "coder", "prompt": "x",
                                               "suffix": "y", "echo": True})
    assert both.status_code == 400 and both.json()["error"]["param"] == "echo"
    ids = coder.post("/v1/completions", json={"model": "coder", "prompt": [5, 6],
                                              "suffix": "y"})
    assert ids.status_code == 400 and ids.json()["error"]["param"] == "prompt"
