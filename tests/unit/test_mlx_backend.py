"""A Linux install without an MLX backend says which extra to install, not a libmlx error."""

from __future__ import annotations

import sys

import pytest

from app.core.config_errors import ConfigError
from app.core.mlx_backend import import_mlx_core


def test_mlx_imports_when_a_backend_is_installed() -> None:
    assert import_mlx_core().array([1, 2]).sum().item() == 3


@pytest.mark.skipif(sys.platform != "linux", reason="the backend extras are Linux-only")
def test_missing_backend_names_the_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlx.core", None)  # import fails as without libmlx.so
    with pytest.raises(ConfigError) as caught:
        import_mlx_core()
    message = str(caught.value)
    assert "'.[cpu]'" in message and "'.[cuda12]'" in message
