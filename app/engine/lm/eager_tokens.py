"""A running batch whose decode step hands out each token as soon as it is computed (CPU).

mlx-lm's ``GenerationBatch._step`` builds the next forward pass from the pending tokens,
starts it with ``mx.async_eval`` and then returns the pending tokens. On a GPU that overlaps
the next pass with the caller's handling of the tokens. On MLX's CPU backend ``async_eval``
returns only when most of the pass has run (the calling thread waits whenever too many tasks
are queued), so each token reached the caller one forward pass after it was computed: a
request's first token ~100-250 ms late at 8-16 rows here, every later token too.

:class:`EagerTokenBatch` keeps mlx-lm's step (same passes, same order, same sampling) but
evaluates the pass that the previous step built, returns its tokens, and leaves the next
pass built and not yet started: the next step (or whoever reads ``_next_tokens`` first, as
batched speculation does) runs it. The generator turns this on for the CPU only
(:class:`app.engine.lm.phases.PhasedBatchGenerator`); elsewhere the stock step runs.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.generate import GenerationBatch


class EagerTokenBatch(GenerationBatch):
    """``GenerationBatch`` with the step described in the module docstring when ``eager``."""

    eager = False
    _pending_context: tuple[mx.array, ...] | list[mx.array] = ()  # buffers the unrun pass updates

    def _step(self) -> tuple[list[int], list[mx.array]]:
        if not self.eager:
            return super()._step()
        self._current_tokens = self._next_tokens
        self._current_logprobs = self._next_logprobs
        inputs = self._current_tokens
        mx.eval(inputs, self._current_logprobs, self._pending_context)  # the pass built last
        logits = self.model(inputs[:, None], cache=self.prompt_cache)[:, -1, :]
        logits, self._pending_context = self._processed(logits, inputs)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        self._next_tokens = self._sample(logprobs)  # built, not started: the next step runs it
        self._next_logprobs = list(logprobs)
        tokens = inputs.tolist()
        for row, token in zip(self.tokens, tokens, strict=True):
            row.append(token)
        return tokens, self._current_logprobs

    def _processed(self, logits: mx.array, inputs: mx.array) -> tuple[mx.array, list[mx.array]]:
        """Each row's logits processors, as mlx-lm's step applies them."""
        if not any(self.logits_processors):
            return logits, []
        rows, contexts = [], []
        for e, processors in enumerate(self.logits_processors):
            row = logits[e : e + 1]
            if processors:
                context = self._token_context[e].update_and_fetch(inputs[e : e + 1])
                contexts.append(context)
                for processor in processors:
                    row = processor(context, row)
            rows.append(row)
        return mx.concatenate(rows, axis=0), contexts

    def _sample(self, logprobs: mx.array) -> mx.array:
        """One batched call when the rows share a sampler, else row by row (as mlx-lm)."""
        samplers = [self.fallback_sampler if s is None else s
                    for s in (self.samplers or [None] * len(self.uids))]
        if not samplers or all(s is samplers[0] for s in samplers):
            return (samplers[0] if samplers else self.fallback_sampler)(logprobs)
        return mx.concatenate([s(logprobs[e : e + 1]) for e, s in enumerate(samplers)], axis=0)
