"""Request limits and the engine's sampling parameters, checked before anything is queued."""

from __future__ import annotations

from dataclasses import replace

from app.config import Settings
from app.core import errors
from app.engine.lm.types import SamplingParams
from app.generation.request import FieldNames, GenerationSpec, Sampling
from app.lifecycle.manager import ManagedModel

DEFAULT_TEMPERATURE = 1.0  # OpenAI's default


def resolve_max_tokens(
    requested: int | None,
    prompt_tokens: int,
    managed: ManagedModel,
    settings: Settings,
    names: FieldNames | None = None,
) -> int:
    """Apply the model's cap and context length; never silently truncate a request."""
    names = names or FieldNames()
    spec = managed.spec
    cap = spec.limits.max_tokens or settings.max_tokens_default
    context = spec.context_length
    if requested is not None and requested > cap:
        raise errors.invalid_request(
            f"{names.max_tokens} is {requested}, but this model allows at most {cap} "
            "completion tokens.",
            param=names.max_tokens,
            code="max_tokens_exceeded",
        )
    if requested is None:
        if prompt_tokens >= context:
            raise errors.context_length_exceeded(prompt_tokens, 1, context, param=names.prompt)
        return min(cap, context - prompt_tokens)
    if prompt_tokens + requested > context:
        raise errors.context_length_exceeded(
            prompt_tokens, requested, context, param=names.prompt
        )
    return requested


def check_request_limits(spec: GenerationSpec, settings: Settings) -> None:
    """Counts the server bounds whatever the model: messages, choices, stop sequences."""
    if spec.messages is not None and len(spec.messages) > settings.max_messages:
        raise errors.invalid_request(
            f"{spec.names.prompt} has {len(spec.messages)} entries; at most "
            f"{settings.max_messages} are allowed.",
            param=spec.names.prompt,
        )
    if spec.n > settings.max_n:
        raise errors.invalid_request(
            f"n is {spec.n}, but at most {settings.max_n} choices are allowed.", param="n"
        )
    stop = spec.sampling.stop
    if stop and len(stop) > settings.max_stop_sequences:
        raise errors.invalid_request(
            f"{spec.names.stop} has {len(stop)} sequences; at most "
            f"{settings.max_stop_sequences} are allowed.",
            param=spec.names.stop,
        )


def check_token_ids(ids: list[int], vocab_size: int, param: str, what: str) -> None:
    """Every token id a client sends must name a row of the vocabulary."""
    if any(t < 0 or t >= vocab_size for t in ids):
        raise errors.invalid_request(f"{what} must be within [0, {vocab_size}).", param=param)


def sampling_params(
    sampling: Sampling, max_tokens: int, vocab_size: int, logprobs: int | None = None
) -> SamplingParams:
    """The engine's per-sequence parameters; 400 for ids outside the vocabulary."""
    for token in sampling.stop_token_ids:
        if not 0 <= token < vocab_size:
            raise errors.invalid_request(
                f"stop_token_ids contains {token}, outside the vocabulary (size {vocab_size}).",
                param="stop_token_ids",
            )
    if sampling.min_tokens > max_tokens:
        raise errors.invalid_request(
            f"min_tokens ({sampling.min_tokens}) must not exceed max_tokens ({max_tokens}).",
            param="min_tokens",
        )
    bias: list[tuple[int, float]] = []
    for key, value in (sampling.logit_bias or {}).items():
        token = int(key)
        if not 0 <= token < vocab_size:
            raise errors.invalid_request(
                f"logit_bias token id {token} is outside the vocabulary (size {vocab_size}).",
                param="logit_bias",
            )
        bias.append((token, value))
    s = sampling
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=DEFAULT_TEMPERATURE if s.temperature is None else s.temperature,
        top_p=1.0 if s.top_p is None else s.top_p,
        top_k=s.top_k if s.top_k and s.top_k < vocab_size else 0,  # >= vocab: all
        min_p=s.min_p or 0.0,
        seed=None if s.seed is None else s.seed % 2**64,  # mx.random.key: uint64
        stop=tuple(s.stop),
        presence_penalty=s.presence_penalty or 0.0,
        frequency_penalty=s.frequency_penalty or 0.0,
        repetition_penalty=s.repetition_penalty or 1.0,
        logit_bias=tuple(bias),
        ignore_eos=s.ignore_eos,
        min_tokens=s.min_tokens,
        stop_token_ids=tuple(s.stop_token_ids),
        logprobs=logprobs,
        speculative=s.speculative,
    )


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Choice ``index`` of ``n``: a seeded request gets distinct but reproducible seeds."""
    if params.seed is None or index == 0:
        return params
    return replace(params, seed=(params.seed + index) % 2**64)
