"""The README's quick start, walked as a newcomer would: its install and test commands are
the ones CI runs, each command it lists answers --help, and its curl and Python examples
work against the real server."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
pytestmark = pytest.mark.e2e


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_install_and_test_commands_are_what_ci_runs():
    bash = _blocks("bash")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[cpu,dev]'" in bash[0] and "install -q -e '.[cpu,dev]'" in ci
    assert "python -m pytest -q" in bash[1] and "python -m pytest -q" in ci


def test_every_listed_command_answers_help():
    commands = set(re.findall(r"`python -m app (\w+)", README))
    assert {"serve", "pull", "models", "convert"} <= commands
    for command in sorted(commands):
        done = subprocess.run([sys.executable, "-m", "app", command, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "usage:" in done.stdout, (command, done.stderr)


def test_the_curl_example_works(server: Server):
    curl = next(b for b in _blocks("bash") if b.startswith("curl"))
    args = shlex.split(curl.replace("\\\n", " "))
    body = json.loads(args[args.index("-d") + 1])
    headers = dict(h.split(": ", 1) for h in (args[i + 1] for i, a in enumerate(args)
                                              if a == "-H"))
    path = args[2].split("127.0.0.1:8000", 1)[1]
    resp = httpx.post(server.base_url + path, json=body, headers=headers, timeout=120)
    assert resp.status_code == 200 and resp.headers["x-house-id"] == "house-1"
    assert resp.json()["choices"][0]["message"]["content"]


def test_the_python_example_works(server: Server, tmp_path: Path):
    snippet = next(b for b in _blocks("python") if "client.embeddings.create" in b)
    code = snippet.replace("http://127.0.0.1:8000", server.base_url)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)  # it writes its speech file here
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].strip() and lines[1] == "384"  # an answer, then the embedding's size
    if "audio.transcriptions" in snippet:  # spoken, then transcribed back
        assert "kitchen" in lines[-1].lower()
