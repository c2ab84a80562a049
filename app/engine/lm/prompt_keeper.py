"""The engine's side of the prefix cache: what to look up, what to store, and when to wait.

- **Prompts, not only answers.** A prompt's KV cache is stored as soon as its prefill is
  done when it computed at least ``MIN_SHARED`` new tokens (and every ``CHECKPOINT_TOKENS``
  during a long one), while the sequence is still in
  mlx-lm's prompt batch, so a second request with the same instructions hits while the
  first is still generating. The prompt is inserted as one segment; mlx-lm splits its last
  token off, so the end of that segment is the whole prompt but its last token.
- **One prefill for a shared prefix.** A waiting request whose prompt shares at least
  ``MIN_SHARED`` not-yet-cached tokens with a prompt being prefilled (or just admitted, of
  the same tenant) waits until that prefill is stored, then starts from it.
- **Salts.** Every lookup and store is under the request's ``cache_salt`` (its tenant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.engine.lm.prefix_cache import PrefixCache
from app.engine.lm.types import GenerationRequest

MIN_SHARED = 256  # uncached tokens in common that make a request wait for another's prefill
CHECKPOINT_TOKENS = 2048  # during a long prefill, store the prefix this often


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix (slice comparisons: C speed, log n of them)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass
class _InFlight:
    request: GenerationRequest
    cached: int  # prompt tokens the lookup at admission served
    stored_at: int  # prompt tokens whose KV is in the cache (the lookup or a checkpoint)
    prefilling: bool = True


class PromptKeeper:
    """Per-engine bookkeeping between the worker's admission/steps and the prefix cache."""

    def __init__(self, cache: PrefixCache, active: dict[int, Any]) -> None:
        """``active``: the worker's running sequences by uid (read only, to prune)."""
        self.cache = cache
        self._active = active
        self._inflight: dict[int, _InFlight] = {}

    def lookup(self, request: GenerationRequest) -> tuple[list[Any] | None, int]:
        return self.cache.fetch(request.prompt_tokens, request.cache_salt)

    def admitted(self, uid: int, request: GenerationRequest, cached: int) -> None:
        for gone in [u for u in self._inflight if u not in self._active]:
            del self._inflight[gone]  # ended without a cache to keep, or failed
        self._inflight[uid] = _InFlight(request, cached, cached)

    def must_wait(self, request: GenerationRequest, taken: list[GenerationRequest]) -> bool:
        """Whether ``request`` should stay queued until a prefill it shares is stored."""
        prompt = request.prompt_tokens
        if len(prompt) <= MIN_SHARED:
            return False
        others = [f.request for uid, f in self._inflight.items()
                  if f.prefilling and uid in self._active] + taken
        covered = None
        for other in others:
            if other.cache_salt != request.cache_salt:
                continue
            shared = common_prefix(prompt, other.prompt_tokens)
            if shared < MIN_SHARED:
                continue
            if covered is None:
                covered = self.cache.covered(prompt, request.cache_salt)
            if shared - covered >= MIN_SHARED:
                return True
        return False

    def on_prompt_progress(self, generator: Any, responses: list[Any]) -> None:
        """Store the prompt prefixes whose prefill finished (or passed a checkpoint)."""
        due = []
        for response in responses:
            flight = self._inflight.get(response.uid)
            if flight is None or not flight.prefilling or response.end_of_prompt:
                continue
            done = flight.cached + response.progress[0]  # progress counts fed tokens only
            if response.end_of_segment:
                flight.prefilling = False
                if done - flight.stored_at >= MIN_SHARED:  # a short tail: the finished
                    due.append(response.uid)  # sequence's store comes soon, no copy now
            elif done - flight.stored_at >= CHECKPOINT_TOKENS:
                due.append(response.uid)
        if not due:
            return
        for uid, (cache, tokens) in generator.extract_cache(due).items():
            flight = self._inflight[uid]
            if cache and len(tokens) > flight.stored_at:
                self.cache.store(tokens, cache, flight.request.cache_salt)
                flight.stored_at = len(tokens)

    def finished(self, uid: int, tokens: list[int], cache: list[Any]) -> None:
        """A sequence ended with its KV cache (prompt + answer): keep it, forget the uid."""
        flight = self._inflight.pop(uid, None)
        if flight is not None:
            self.cache.store(tokens, cache, flight.request.cache_salt)

