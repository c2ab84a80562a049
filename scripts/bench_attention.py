#!/usr/bin/env python
"""CPU attention (``app.kernels.attention.sdpa``) vs a git ref's, on a real model.

Times one forward of the optimized model (:func:`app.kernels.compile.optimize_model`) per
case ``B x N @ C`` (B sequences of N new tokens over a C-token KV cache: agent turns served
from the prefix cache, prefill chunks, decode steps), with this checkout's ``sdpa`` and with
``--ref``'s (its ``attention.py`` and ``fast_math.py`` loaded from git), interleaved round
by round; prints the median per case. ``--check`` also compares greedy text of both.

    python scripts/bench_attention.py --model /tmp/smol-f32 --rounds 5 --check
    python scripts/bench_attention.py --sdpa-only --rounds 5   # one sdpa call, random inputs
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from app.core.blas import configure_blas  # noqa: E402

configure_blas()

import mlx.core as mx  # noqa: E402
from mlx_lm import generate, load  # noqa: E402
from mlx_lm.generate import _merge_caches  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

from app.kernels import attention  # noqa: E402
from app.kernels.compile import optimize_model  # noqa: E402

CASES = ("1x36@3200", "4x36@3200", "1x512@0", "1x512@2048", "1x1@3200", "4x1@3200")
PROMPTS = ("The history of the printing press", "def fibonacci(n):", "Explain why the sky is blue.")


def _module(name: str, source: str) -> ModuleType:
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, name, "exec"), module.__dict__)  # noqa: S102 - our own git history
    return module


def ref_sdpa(ref: str) -> Any:
    """``sdpa`` of ``ref``, with ``ref``'s fast_math under it."""
    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{ref}:{path}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout

    mine = sys.modules["app.kernels.fast_math"]
    ref_math = _module("ref_fast_math", show("app/kernels/fast_math.py"))
    sys.modules["app.kernels.fast_math"] = ref_math
    try:
        return _module("ref_attention", show("app/kernels/attention.py")).sdpa
    finally:
        sys.modules["app.kernels.fast_math"] = mine


def _tokens(b: int, n: int, start: int) -> mx.array:
    return mx.array([[100 + (start + i) % 20000 for i in range(n)]] * b)


def _context(model: Any, tokens: int) -> list[Any]:
    cache = make_prompt_cache(model)
    for i in range(0, tokens, 1024):
        model(_tokens(1, min(1024, tokens - i), i), cache=cache)
        mx.eval([c.state for c in cache])
    return cache


def time_case(model: Any, contexts: dict[int, list[Any]], case: str) -> float:
    """Seconds of one forward for ``case`` ("BxN@C")."""
    shape, ctx = case.split("@")
    b, n = (int(x) for x in shape.split("x"))
    if int(ctx) == 0:
        cache = make_prompt_cache(model)
    else:
        if int(ctx) not in contexts:
            contexts[int(ctx)] = _context(model, int(ctx))
        base = contexts[int(ctx)]
        caches = [copy.deepcopy(base) for _ in range(b)]
        cache = caches[0] if b == 1 else _merge_caches(caches)
        mx.eval([c.state for c in cache])
    start = time.perf_counter()
    mx.eval(model(_tokens(b, n, 7000), cache=cache))
    return time.perf_counter() - start


def time_sdpa(fn: Any, case: str, repeats: int = 20) -> float:
    """Seconds of one ``fn`` call alone, SmolLM2's heads (9 query, 3 KV, dim 64), causal."""
    shape, ctx = case.split("@")
    b, n = (int(x) for x in shape.split("x"))
    keys = int(ctx) + n
    q = mx.random.normal((b, 9, n, 64))
    k, v = mx.random.normal((2, b, 3, keys, 64))
    mask = mx.broadcast_to(mx.arange(keys - n, keys)[:, None] >= mx.arange(keys)[None],
                           (b, 1, n, keys))
    mx.eval(q, k, v, mask, fn(q, k, v, 0.125, mask))
    start = time.perf_counter()
    for _ in range(repeats):
        mx.eval(fn(q, k, v, 0.125, mask))
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="/tmp/smol-f32")
    ap.add_argument("--ref", default="main", help="git ref whose sdpa is the baseline")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--check", action="store_true", help="greedy text of both must agree")
    ap.add_argument("--sdpa-only", action="store_true",
                    help="time the sdpa call alone on random inputs instead of a forward")
    args = ap.parse_args()
    model, tok = load(args.model)
    print(optimize_model(model))
    impls = {"ref": ref_sdpa(args.ref), "new": attention.sdpa}
    if args.check:
        for prompt in PROMPTS:
            texts = {}
            for name, fn in impls.items():
                attention.sdpa = fn
                texts[name] = generate(model, tok, prompt, max_tokens=48)
            print(f"greedy {'same' if texts['ref'] == texts['new'] else 'DIFFERENT'}: {prompt!r}")
    contexts: dict[int, list[Any]] = {}
    for case in args.cases:
        times: dict[str, list[float]] = {name: [] for name in impls}
        for _ in range(args.rounds + 1):  # the first round warms (traces, kernel builds)
            for name, fn in impls.items():
                attention.sdpa = fn
                times[name].append(time_sdpa(fn, case) if args.sdpa_only
                                   else time_case(model, contexts, case))
        ref, new = (statistics.median(t[1:]) * 1e3 for t in times.values())
        print(f"{case:>11}: ref {ref:7.1f} ms  new {new:7.1f} ms  x{ref / new:.2f}", flush=True)


if __name__ == "__main__":
    main()
