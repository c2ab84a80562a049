"""Importing MLX with a clear answer when its Linux backend is missing.

On Linux the ``mlx`` wheel carries only the Python bindings; its library comes from a backend
package (``mlx-cpu``, ``mlx-cuda-12``, ``mlx-cuda-13``), which this project installs through
its ``cpu`` / ``cuda12`` / ``cuda13`` extras so that exactly one backend is installed. A plain
``pip install .`` on Linux therefore has none, and ``import mlx.core`` fails with
"libmlx.so: cannot open shared object file"; this turns that into the install command.
"""

from __future__ import annotations

import sys
from types import ModuleType

from app.core.config_errors import ConfigError

INSTALL_HINT = (
    "MLX has no backend installed. Install the server with one: pip install -e '.[cpu]' "
    "(Linux CPU), '.[cuda12]' or '.[cuda13]' (Linux with an NVIDIA GPU); on macOS plain "
    "'pip install -e .' brings Metal"
)


def import_mlx_core() -> ModuleType:
    """``mlx.core``, or a :class:`ConfigError` saying how to install a backend."""
    try:
        import mlx.core as mx
    except ImportError as exc:
        if "libmlx" in str(exc) or sys.platform == "linux":
            raise ConfigError(f"{INSTALL_HINT} ({exc})") from exc
        raise
    return mx
