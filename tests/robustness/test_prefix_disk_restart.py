"""Issue 21: a session's next turn after a server restart starts from the disk tier."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.robustness.conftest import Server, start_server

PROMPT = [(11 + 7 * i) % 200 + 10 for i in range(300)]  # > one 256-token disk block


def _turn(server: Server, prompt: list[int]) -> dict:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 2, "temperature": 0}
    resp = httpx.post(server.base_url + "/v1/completions", json=body,
                      headers={"X-House-ID": "house-restart"}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()["usage"]


def _two_runs(workdir: Path, models_file: Path, *flags: str) -> tuple[dict, float]:
    first = start_server(workdir, models_file, *flags)
    try:
        assert _turn(first, PROMPT)["prompt_tokens_details"]["cached_tokens"] == 0
    finally:
        assert first.stop() == 0
    second = start_server(workdir, models_file, *flags)
    try:
        usage = _turn(second, PROMPT + [5, 6, 7])
        disk_hits = second.metric("mlx_server_prefix_cache_tier_hits_total", tier="disk")
    finally:
        assert second.stop() == 0
    return usage, disk_hits


def test_next_turn_after_restart_starts_from_disk(tmp_path: Path, models_file: Path):
    usage, disk_hits = _two_runs(tmp_path / "on", models_file)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 256  # one whole block
    assert disk_hits == 1
    assert list((tmp_path / "on" / "cache" / "prefix-cache").rglob("*.safetensors"))


def test_disk_tier_off_keeps_nothing(tmp_path: Path, models_file: Path):
    usage, disk_hits = _two_runs(tmp_path / "off", models_file, "--prefix-cache-disk", "off")
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert disk_hits == 0
    assert not (tmp_path / "off" / "cache" / "prefix-cache").exists()
