#!/usr/bin/env python3
"""Cached-prefix KV precision: float32 (as computed on CPU) vs float16 vs 8-bit quantized.

For each prompt: prefill it once (float32), keep the KV cache of all but its last token in
each storage precision, then restore it (back to float32 for the model) and decode
``--max-tokens`` greedy tokens. Reported per precision: bytes held per token, the time to
restore a cached entry (the prefill it skips is timed too), and whether the greedy output
equals the float32 one on every prompt.

  python scripts/bench_kv_precision.py --model /tmp/smol-f32 --prompt-tokens 1024
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from typing import Any

import mlx.core as mx
from mlx_lm import load
from mlx_lm.models.cache import KVCache, make_prompt_cache

TEXTS = [
    "Explain, step by step, how a city decides where to build a new tram line, who pays for "
    "it, and what residents can do to take part in the planning. ",
    "Write a careful review of a small coffee shop that opened last month: the space, the "
    "menu, the prices, the service, and whether you would go back. ",
    "You are a coding agent. The repository has a billing module with invoices, taxes and "
    "discounts. List the checks you would run before changing how taxes are rounded. ",
]


def prompt_ids(tokenizer: Any, text: str, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer.encode(text, add_special_tokens=False)
    return ids[:n]


def store(cache: list[KVCache], kind: str) -> Any:
    """The entry as it would be kept: arrays in the storage precision."""
    if kind == "float32":
        return [(c.keys[..., : c.offset, :], c.values[..., : c.offset, :]) for c in cache]
    if kind == "float16":
        return [(c.keys[..., : c.offset, :].astype(mx.float16),
                 c.values[..., : c.offset, :].astype(mx.float16)) for c in cache]
    return [(mx.quantize(c.keys[..., : c.offset, :], group_size=64, bits=8),
             mx.quantize(c.values[..., : c.offset, :], group_size=64, bits=8)) for c in cache]


def restore(entry: Any, kind: str) -> list[KVCache]:
    out = []
    for keys, values in entry:
        c = KVCache()
        if kind == "int8":
            keys = mx.dequantize(*keys, group_size=64, bits=8)
            values = mx.dequantize(*values, group_size=64, bits=8)
        c.keys, c.values = keys.astype(mx.float32), values.astype(mx.float32)
        c.offset = c.keys.shape[2]
        out.append(c)
    mx.eval([c.state for c in out])
    return out


def nbytes(entry: Any) -> int:
    return sum(a.nbytes for pair in entry for part in pair
               for a in (part if isinstance(part, tuple | list) else (part,)))


def greedy(model: Any, cache: list[KVCache], last: int, n: int) -> list[int]:
    token, out = mx.array([[last]]), []
    for _ in range(n):
        logits = model(token, cache=cache)[:, -1, :]
        nxt = int(mx.argmax(logits, axis=-1).item())
        out.append(nxt)
        token = mx.array([[nxt]])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n")[0])
    p.add_argument("--model", required=True, help="mlx-lm model directory")
    p.add_argument("--prompt-tokens", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--json", dest="json_out", default=None)
    args = p.parse_args()
    model, tokenizer = load(args.model)
    kinds = ("float32", "float16", "int8")
    rows: dict[str, dict[str, Any]] = {k: {"same_output": True, "restore_s": [], "bytes": 0}
                                       for k in kinds}
    prefill_s = []
    for text in TEXTS:
        ids = prompt_ids(tokenizer, text, args.prompt_tokens)
        cache = make_prompt_cache(model)
        started = time.perf_counter()
        model(mx.array([ids[:-1]]), cache=cache)
        mx.eval([c.state for c in cache])
        prefill_s.append(time.perf_counter() - started)
        reference = None
        for kind in kinds:
            entry = store(cache, kind)
            mx.eval(entry)
            started = time.perf_counter()
            restored = restore(copy.copy(entry), kind)
            rows[kind]["restore_s"].append(time.perf_counter() - started)
            rows[kind]["bytes"] = nbytes(entry) // (len(ids) - 1)
            out = greedy(model, restored, ids[-1], args.max_tokens)
            if reference is None:
                reference = out
            rows[kind]["same_output"] &= out == reference
    print(f"prefill of {args.prompt_tokens - 1} tokens (what a hit skips): "
          f"{min(prefill_s):.2f} s (best of {len(prefill_s)})")
    print(f"{'KV':>8}{'bytes/token':>13}{'restore s':>11}{'greedy == float32':>20}")
    for kind, row in rows.items():
        print(f"{kind:>8}{row['bytes']:>13}{min(row['restore_s']):>11.4f}"
              f"{str(row['same_output']):>20}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "prefill_s": prefill_s, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
