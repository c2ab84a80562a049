"""The command line a newcomer meets: help, version, per-command flags, the models table,
and one-line errors for typos in settings and models files."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.__main__ import main


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's --help / --version
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "serve" in out and "convert" in out
    assert "``" not in out and ":class:" not in out  # no Sphinx markup
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("mlx-openai-server ") and out.strip()[-1].isdigit()


def test_each_command_shows_its_own_flags_with_defaults(capsys):
    _, serve, _ = run(capsys, "serve", "--help")
    serve = " ".join(serve.split())  # argparse wraps long help lines
    assert "--max-batch-size" in serve and "(default: 32)" in serve
    assert "(default: 4194304 (4 MiB))" in serve  # --max-body-bytes
    _, pull, _ = run(capsys, "pull", "--help")
    assert "--cache-dir" in pull and "--max-batch-size" not in pull and "--port" not in pull
    _, convert, _ = run(capsys, "convert", "--help")
    assert "SOURCE" in convert.upper() and "--out " not in convert  # one documented spelling


def test_models_table_says_what_is_cached(capsys, tmp_path: Path):
    models = tmp_path / "models.yaml"
    local = tmp_path / "local.gguf"
    local.write_bytes(b"GGUF")
    models.write_text(f"models:\n  - id: here\n    source: {local}\n"
                      "  - id: gone\n    source: /nonexistent/model.gguf\n")
    code, out, _ = run(capsys, "models", "--models-file", str(models),
                       "--cache-dir", str(tmp_path / "cache"), "--port", "9")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "TYPE", "CAPABILITIES", "STATE", "SOURCE"]
    here = next(line for line in lines if line.startswith("here"))
    gone = next(line for line in lines if line.startswith("gone"))
    assert " cached " in here and str(local) in here
    assert "not cached" in gone and "/nonexistent/model.gguf" in gone


@pytest.mark.parametrize(("text", "expected"), [
    ("models:\n  - id: x\n    source: /m\n    capabilites: [chat]\n",
     "models[0] (id 'x'): unknown key 'capabilites' (did you mean 'capabilities'?)"),
    ("models:\n  - id: y\n    source: /m\n    type: llm\n",
     "models[0] (id 'y'): type: input should be 'lm' or 'embedding' (got 'llm')"),
    ("models:\n  - id: z\n   source: /m\n", "line 3, column 4: not valid YAML"),
])
def test_models_file_typos_are_one_line(capsys, tmp_path: Path, text: str, expected: str):
    models = tmp_path / "models.yaml"
    models.write_text(text)
    code, _, err = run(capsys, "models", "--models-file", str(models))
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_settings_file_typos_are_one_line(capsys, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MLX_SERVER_CONFIG", "")  # restored (removed) after the test
    settings = tmp_path / "settings.yaml"
    settings.write_text("prot: 9000\n")
    code, _, err = run(capsys, "models", "--config", str(settings))
    assert code == 2 and "unknown key 'prot' (did you mean 'port'?)" in err
    settings.write_text("port: many\n")
    code, _, err = run(capsys, "models", "--config", str(settings))
    assert code == 2 and "port: input should be a valid integer" in err
