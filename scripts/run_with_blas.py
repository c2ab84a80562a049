"""Run a Python module as ``__main__`` after the same BLAS set-up our server does.

Used by the benchmarks so that a reference server (``mlx_lm.server``) gets the same
OpenBLAS as ours, e.g.:  python scripts/run_with_blas.py mlx_lm.server --model DIR
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.core.blas import configure_blas  # noqa: E402


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: run_with_blas.py MODULE [ARGS...]")
    report = configure_blas()
    print(f"BLAS: {report}", file=sys.stderr)
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
