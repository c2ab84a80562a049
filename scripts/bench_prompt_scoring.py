#!/usr/bin/env python3
"""What prompt scoring (prompt logprobs from the prefill) costs, on the engine alone.

One prompt of ``--prompt-tokens`` tokens, prefilled ``--repeats`` times each way (prefix
cache off, so every run prefills the whole prompt): the first token only
(``max_tokens`` 1), scored with ``max_tokens`` 0 (what lm-eval-harness's loglikelihood
sends), and scored with top-5 alternatives. Reported: median seconds and tokens/s per way.

  python scripts/bench_prompt_scoring.py --model default --prompt-tokens 512
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from app.core.blas import configure_blas

configure_blas()

from app.config import Settings  # noqa: E402
from app.engine.lm.types import Finished, GenerationRequest, SamplingParams  # noqa: E402
from app.engine.lm.worker import ModelEngine  # noqa: E402
from app.lifecycle.manager import load_language_model  # noqa: E402
from app.lifecycle.registry import ModelRegistry  # noqa: E402

WAYS = {
    "prefill + 1 token": SamplingParams(max_tokens=1, temperature=0),
    "scored, max_tokens 0": SamplingParams(max_tokens=0, prompt_logprobs=0),
    "scored, top 5": SamplingParams(max_tokens=0, prompt_logprobs=5),
}


async def once(engine: ModelEngine, prompt: list[int], params: SamplingParams) -> float:
    request = GenerationRequest(prompt, params, asyncio.get_running_loop())
    started = time.perf_counter()
    engine.submit(request)
    while not isinstance(await request.events.get(), Finished):
        pass
    return time.perf_counter() - started


async def main(args: argparse.Namespace) -> None:
    spec = ModelRegistry.defaults().get(args.model)
    engine = ModelEngine(lambda: load_language_model(spec, Settings(offline=True)),
                         prefill_step_size=args.prefill_step_size, name=spec.id)
    engine.start().result()
    words = ("the quick brown fox jumps over the lazy dog while counting numbers " * 400)
    prompt = engine.tokenizer.encode(words, add_special_tokens=False)[: args.prompt_tokens]
    for _ in range(2):  # warm-up: compiled kernels, BLAS threads
        for params in WAYS.values():
            await once(engine, prompt, params)
    for name, params in WAYS.items():
        runs = [await once(engine, prompt, params) for _ in range(args.repeats)]
        median = statistics.median(runs)
        print(f"{name:>22}: {median * 1e3:8.1f} ms  ({len(prompt) / median:7.0f} prompt tok/s)")
    engine.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--prefill-step-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    asyncio.run(main(parser.parse_args()))
