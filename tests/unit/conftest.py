"""Unit fixtures: an in-process app serving the tiny random llama."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from app.lifecycle.registry import ModelRegistry, ModelSpec
from tests.unit.waiting import ready_client


@pytest.fixture(scope="module")
def client(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    registry = ModelRegistry(
        [
            ModelSpec(
                id="tiny", source=str(tiny_llama_dir), family="llama", context_length=1024,
                aliases=["default"], limits={"max_tokens": 64}, preload=True,
            )
        ]
    )
    settings = Settings(max_body_bytes=64 * 1024, cache_dir=tmp_path_factory.mktemp("cache"))
    with ready_client(settings, registry, timeout=60) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def spec_tiny(tiny_llama_dir: Path):
    """The tiny llama and the speculative tests' prompts, tokenized."""
    from app.models.mlx_dir import load_mlx_dir
    from tests.unit.speculation_helpers import TEXTS

    loaded = load_mlx_dir(tiny_llama_dir)
    return loaded.model, [loaded.tokenizer.encode(t) for t in TEXTS]


@pytest.fixture
def oracle(monkeypatch: pytest.MonkeyPatch) -> dict:
    from tests.unit.speculation_helpers import install_draft_oracle

    return install_draft_oracle(monkeypatch)

