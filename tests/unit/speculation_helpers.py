"""Shared by the speculative-decoding tests: prompts, a generator driver, a draft oracle."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator

from app.engine.lm import speculative
from app.engine.lm.speculative import PromptLookup, SpeculativeBatchGenerator

TEXTS = [
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the",
    "Hello world! This is a tiny model. Hello world! This is",
    "What is the capital of France?",
    "0 1 2 3 4 5 6 7 8 9 0 1 2 3",
]


def run(gen: Any, prompts: list[list[int]], max_tokens: int = 24,
        schedule: dict[int, list[list[int]]] | None = None, **insert: Any):
    """Drive a generator to the end; `schedule` maps a step number to prompts inserted then.
    Checks no token follows a sequence's end and every ended sequence's returned cache holds
    exactly its tokens. Returns (tokens per sequence, finish reasons), in insertion order."""
    uids = gen.insert(prompts, max_tokens=[max_tokens] * len(prompts), **insert)
    out: dict[int, list[int]] = {uid: [] for uid in uids}
    reasons: dict[int, str] = {}
    for step in range(10_000):
        for late in (schedule or {}).pop(step, []):
            new = gen.insert([late], max_tokens=[max_tokens])
            uids += new
            out[new[0]] = []
        if len(reasons) == len(uids) and not schedule:
            break
        for r in gen.next()[1]:
            assert r.uid not in reasons, "token after the end of a sequence"
            out[r.uid].append(r.token)
            if r.finish_reason:
                reasons[r.uid] = r.finish_reason
                assert r.prompt_cache[0].offset == len(r.all_tokens)
    return [out[u] for u in uids], [reasons[u] for u in uids]


def plain(model: Any, **kw: Any) -> BatchGenerator:
    return BatchGenerator(model, stream=mx.default_stream(mx.default_device()), **kw)


def spec(model: Any, **kw: Any) -> SpeculativeBatchGenerator:
    return SpeculativeBatchGenerator(model, stream=mx.default_stream(mx.default_device()), **kw)


def install_draft_oracle(monkeypatch: Any) -> dict:
    """Drafts become each sequence's true continuation: set ``state["references"]`` to
    {prompt tuple: continuation}; ``state["corrupt"]``: drafts wrong from that index on."""
    state: dict = {"references": {}, "corrupt": None}

    def propose(self: PromptLookup, k: int) -> list[int]:
        for prompt, tokens in state["references"].items():
            if tuple(self.tokens[: len(prompt)]) == prompt:
                known = len(self.tokens) - len(prompt)
                draft = tokens[known : known + k]
                bad = state["corrupt"]
                if bad is not None and len(draft) > bad:
                    draft = draft[:bad] + [(t + 1) % 300 for t in draft[bad:]]
                return draft
        return []

    monkeypatch.setattr(speculative.PromptLookup, "propose", propose)
    return state
