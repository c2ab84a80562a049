"""app.core.blas: OpenBLAS under MLX's CPU backend (Linux only).

Each MLX check runs in a fresh interpreter: the BLAS is picked once per process,
before ``mlx.core`` is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from app.core import blas
from app.core.blas import symbols
imported_mlx_early = "mlx.core" in sys.modules or "numpy" in sys.modules
report = blas.configure_blas(MODE)
import numpy as np
import mlx.core as mx

rng = np.random.default_rng(0)
a = rng.standard_normal((257, 193), dtype=np.float32)
b = rng.standard_normal((193, 131), dtype=np.float32)
v = rng.standard_normal(193, dtype=np.float32)
m = rng.standard_normal((48, 48), dtype=np.float32) + 48 * np.eye(48, dtype=np.float32)
mm = np.array(mx.matmul(mx.array(a), mx.array(b), stream=mx.cpu))
mv = np.array(mx.matmul(mx.array(a), mx.array(v), stream=mx.cpu))
inv = np.array(mx.linalg.inv(mx.array(m), stream=mx.cpu))
maps = sorted({l.split(None, 5)[5].strip() for l in open("/proc/self/maps") if len(l.split()) == 6})
out = {
    "report": report.as_dict(),
    "imported_mlx_early": imported_mlx_early,
    "mm_err": float(np.abs(mm - a @ b).max()),
    "mv_err": float(np.abs(mv - a @ v).max()),
    "inv_err": float(np.abs(inv - np.linalg.inv(m)).max()),
    "openblas_mapped": [p for p in maps if "libopenblas" in os.path.basename(p)],
    "gfortran_mapped": [p for p in maps if "gfortran" in p],
    "refblas_mapped": [p for p in maps if os.path.basename(p).startswith("libblas")],
    "sgemm_owner": symbols._symbol_owner("cblas_sgemm"),
}
if report.backend != "openblas" and MODE != "off":
    out["candidates"] = [
        [c.source, c.path, c.usable, c.reason] for c in blas.find_openblas_candidates()
    ]
print(json.dumps(out))
"""


def _run(code: str, cache: Path) -> dict:
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    env.pop("OPENBLAS_NUM_THREADS", None)
    proc = subprocess.run(
        [sys.executable, "-c", "import os\n" + code], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_numbers(out: dict) -> None:
    assert out["mm_err"] < 1e-3
    assert out["mv_err"] < 1e-3
    assert out["inv_err"] < 1e-4


def test_auto_loads_openblas_and_mlx_uses_it(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    out = _run(PROBE.replace("MODE", '"auto"'), cache)
    report = out["report"]
    assert not out["imported_mlx_early"]
    if report["backend"] != "openblas":
        usable = [c for c in out.get("candidates", []) if c[2]]
        if not usable:
            pytest.skip(f"no OpenBLAS usable on this machine: {out.get('candidates')} "
                        f"({report['detail']})")
        pytest.fail(f"usable OpenBLAS {usable} but report is {report}")
    assert report["threads"] == 1  # the default
    assert out["openblas_mapped"], "libopenblas not mapped"
    lib = report["library"]
    assert os.path.realpath(out["sgemm_owner"]) == os.path.realpath(lib)
    # libgfortran came from a wheel's bundled copy (patched copy in our cache, or
    # in memory), never from a system directory.
    assert not [p for p in out["gfortran_mapped"] if p.startswith(("/usr/", "/lib"))]
    _check_numbers(out)

    # Second start: reuses the cached copy and probe verdict.
    cached = sorted(p for p in cache.rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    again = _run(PROBE.replace("MODE", '"auto"'), cache)
    assert again["report"]["backend"] == "openblas"
    assert sorted(p for p in cache.rglob("*") if p.is_file()) == cached
    assert {p: p.stat().st_mtime_ns for p in cached} == stamps
    _check_numbers(again)


def test_off_leaves_reference_blas(tmp_path: Path) -> None:
    out = _run(PROBE.replace("MODE", '"off"'), tmp_path / "cache")
    assert out["report"]["backend"] == "reference"
    assert not out["openblas_mapped"]
    assert out["refblas_mapped"]
    assert out["sgemm_owner"] is None  # MLX binds its own libblas
    assert not (tmp_path / "cache").exists()
    _check_numbers(out)


def test_too_late_after_mlx_import_does_not_crash(tmp_path: Path) -> None:
    code = (
        "import json, mlx.core\nfrom app.core.blas import configure_blas\n"
        "r = configure_blas('auto', 2)\nprint(json.dumps(r.as_dict()))\n"
    )
    report = _run(code, tmp_path / "cache")
    assert report["backend"] == "reference"
    assert "too late" in report["detail"]


# ----------------------------------------------------------- in-process pieces


def test_soname_patch_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.blas import elf, loader, runtime_deps

    src = next(runtime_deps._bundled_copies("gfortran", "5", loader._find_libmlx()), None)
    if src is None:
        pytest.skip("no wheel-bundled libgfortran here")
    info = elf._read_elf(src)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = Path(runtime_deps._cached_copy(src, info, "libgfortran.so.5"))
    assert path.is_relative_to(tmp_path / "mlx-openai-server-lab" / "blas")
    patched = elf._read_elf(str(path))
    assert patched.soname == "libgfortran.so.5"
    assert patched.needed == info.needed
    assert patched.verdefs == info.verdefs
    assert path.stat().st_size == os.path.getsize(src)
    mtime = path.stat().st_mtime_ns
    assert runtime_deps._cached_copy(src, info, "libgfortran.so.5") == str(path)  # reused
    assert path.stat().st_mtime_ns == mtime
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError):
        elf._patched_bytes(src, info, "lib" + "x" * len(info.soname or ""))


def test_cpu_target_check() -> None:
    from app.core.blas import missing_cpu_flags

    avx2 = {"sse4_2", "avx", "avx2", "fma", "bmi1", "bmi2"}
    cfg = "OpenBLAS 0.3.31 NO_AFFINITY SKYLAKEX MAX_THREADS=4"
    assert "avx512f" in missing_cpu_flags(cfg, avx2)
    assert missing_cpu_flags(cfg, avx2 | {"avx512f", "avx512cd", "avx512bw", "avx512dq",
                                          "avx512vl"}) == []
    assert missing_cpu_flags("OpenBLAS 0.3.33 DYNAMIC_ARCH NO_AFFINITY Zen", set()) == []
    assert missing_cpu_flags("OpenBLAS 0.3.31 NO_AFFINITY HASWELL", avx2) == []
    assert "sve2" in missing_cpu_flags("OpenBLAS 0.3.31 NO_AFFINITY NEOVERSEN2", {"asimd"})
    assert missing_cpu_flags("OpenBLAS 0.3.31 MYSTERYCORE", avx2) is None


def test_thread_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core import blas
    from app.core.blas import loader

    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    assert loader._resolve_threads(None) == (blas.DEFAULT_THREADS, "default")
    assert loader._resolve_threads(3) == (3, "argument")
    assert loader._resolve_threads(0)[1] == "default"
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    assert loader._resolve_threads(None) == (4, "$OPENBLAS_NUM_THREADS")
    assert loader._resolve_threads(2) == (2, "argument")
