"""Shared fixtures. BLAS is configured before anything imports MLX."""

from __future__ import annotations

from app.core.blas import configure_blas

configure_blas()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory):
    from tests.unit.tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
