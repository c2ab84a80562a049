"""Grammars compiled once per schema, off the engine thread, time-limited (issue 23 item 9)."""

from __future__ import annotations

import json
import threading

import jsonschema
import pytest
from fastapi.testclient import TestClient

from app.engine.lm.grammar import GrammarFactory
from tests.unit.test_structured_output import FINITE_SCHEMA, constrained


def test_schema_compiled_once_and_never_on_the_engine_thread(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    stock = GrammarFactory.compile

    def counting(self: GrammarFactory, grammar: str):
        threads.append(threading.current_thread().name)
        return stock(self, grammar)

    monkeypatch.setattr(GrammarFactory, "compile", counting)
    schema = {**FINITE_SCHEMA, "title": "compiled-once"}  # not in the cache yet
    for seed in (1, 2):
        resp = constrained(client, schema=schema, temperature=1.0, seed=seed, n=3)
        assert resp.status_code == 200, resp.text
        for choice in resp.json()["choices"]:
            jsonschema.validate(json.loads(choice["message"]["content"]), schema)
    assert len(threads) == 1, threads  # one compilation for two requests of three choices
    assert not threads[0].startswith("engine-")


def test_schema_over_the_compile_time_limit_is_400(client: TestClient) -> None:
    settings = client.app.state.manager.settings
    saved = settings.grammar_compile_timeout_s
    settings.grammar_compile_timeout_s = 0.001
    try:
        schema = {"anyOf": [{"const": f"choice-{i}"} for i in range(2000)]}
        resp = constrained(client, schema=schema)
    finally:
        settings.grammar_compile_timeout_s = saved
    assert resp.status_code == 400, resp.text
    assert "too complex" in resp.json()["error"]["message"]
    assert client.get("/health").status_code == 200
