#!/usr/bin/env python
"""Decode speed and memory of one registry language model per weight format (issue 14).

Each format is loaded in a fresh child process (so memory is the format's own), then one
greedy stream decodes ``--max-tokens`` tokens of a fixed chat prompt through mlx-lm's
``generate_step`` (no HTTP, no batching); prefill speed is the prompt's tokens over the time
to the first token. Formats:

- ``float32``, ``bfloat16``: the GGUF dequantized (``--weights-dtype``);
- ``quantized``: the GGUF's own blocks repacked for MLX (Q5_0 → 5-bit, Q4_K → 4-bit...);
- ``mlx-8bit``: the float32 weights requantized with MLX's 8-bit affine (group 64).

    python scripts/bench_weights.py --model qwen2.5-coder-0.5b-instruct --max-tokens 64
    python scripts/bench_weights.py --model qwen2.5-coder-1.5b-instruct \
        --formats float32,quantized --max-tokens 8 --interleave 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("float32", "bfloat16", "quantized", "mlx-8bit")
PROMPT = "Write a Python function that checks whether a number is prime, with a docstring."


def _load(model_id: str, fmt: str) -> tuple[Any, float]:
    """(the loaded model in format ``fmt``, load seconds)."""
    import mlx.core as mx
    import mlx.nn as nn

    from app.config import Settings
    from app.lifecycle.manager import load_language_model
    from app.lifecycle.registry import ModelRegistry

    spec = ModelRegistry.defaults().get(model_id)
    assert spec is not None, model_id
    weights = "float32" if fmt == "mlx-8bit" else fmt
    started = time.perf_counter()
    loaded = load_language_model(spec, Settings(weights_dtype=weights))
    if fmt == "mlx-8bit":
        nn.quantize(loaded.model, group_size=64, bits=8)
        mx.eval(loaded.model.parameters())
        mx.clear_cache()
    return loaded, time.perf_counter() - started


def _stream(loaded: Any, max_tokens: int) -> dict:
    """One greedy stream of the fixed prompt: prefill tok/s (prompt tokens over the time to
    the first token), decode tok/s (after it) and the text."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    tok = loaded.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}],
                                  add_generation_prompt=True)
    out, start, first = [], time.perf_counter(), None
    for token, _ in generate_step(mx.array(ids), loaded.model, max_tokens=max_tokens):
        if first is None:
            first = time.perf_counter()
        out.append(int(token))
    first = first or time.perf_counter()
    return {
        "prompt_tokens": len(ids),
        "prefill_tok_s": round(len(ids) / (first - start), 2),
        "decode_tok_s": round((len(out) - 1) / (time.perf_counter() - first), 2),
        "text": tok.decode(out)[:80],
    }


def measure(model_id: str, fmt: str, max_tokens: int) -> dict:
    """Runs in the child: load, warm up, decode, report."""
    import mlx.core as mx

    from app.models.loaded import quantized_label

    loaded, load_s = _load(model_id, fmt)
    _stream(loaded, 4)  # warm-up
    run = _stream(loaded, max_tokens)
    return {
        "format": fmt,
        "weights": quantized_label(loaded.model) or loaded.weight_dtype,
        "load_s": round(load_s, 1),
        **run,
        "active_mib": round(mx.get_active_memory() / 2**20),
        "peak_mib": round(mx.get_peak_memory() / 2**20),
    }


def interleave(model_id: str, formats: list[str], max_tokens: int, rounds: int) -> None:
    """All formats loaded in one process, their streams alternated ``rounds`` times, so that
    each sees the same share of a busy machine (memory is then not per format)."""
    models = {fmt: _load(model_id, fmt)[0] for fmt in formats}
    for loaded in models.values():
        _stream(loaded, 4)  # warm-up
    for i in range(rounds):
        for fmt, loaded in models.items():
            run = _stream(loaded, max_tokens)
            print(json.dumps({"round": i, "format": fmt, **run}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--interleave", type=int, metavar="ROUNDS",
                        help="load every format in one process and alternate their streams")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.interleave:
        sys.path.insert(0, str(ROOT))
        from app.core.blas import configure_blas

        configure_blas()
    if args.interleave:
        interleave(args.model, args.formats.split(","), args.max_tokens, args.interleave)
        return
    if args.child:
        print(json.dumps(measure(args.model, args.child, args.max_tokens)))
        return
    rows = []
    for fmt in args.formats.split(","):
        out = subprocess.run(
            [sys.executable, __file__, "--model", args.model, "--child", fmt,
             "--max-tokens", str(args.max_tokens)],
            capture_output=True, text=True, check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print("| format | weights | prefill tok/s | decode tok/s | active MiB | peak MiB | load s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['format']} | {r['weights']} | {r['prefill_tok_s']} | {r['decode_tok_s']} "
              f"| {r['active_mib']} | {r['peak_mib']} | {r['load_s']} |")


if __name__ == "__main__":
    main()
