"""Sentence-embedding models (sentence-transformers layout) on MLX.

``load_embedding_model(path)`` reads a sentence-transformers directory::

    config.json  model.safetensors  tokenizer.json (or vocab.txt)
    modules.json  1_Pooling/config.json  sentence_bert_config.json

and returns a :class:`LoadedEmbeddingModel` whose ``embed_token_ids`` runs one padded
forward pass (BERT + attention-masked pooling + optional L2 normalisation) on MLX.
Tokenisation never truncates: callers get the full length and decide what is too long.
All MLX calls on one model must come from one thread (see ``EmbeddingBatcher``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from tokenizers import Tokenizer

from app.models.sentence.bert import BertConfig, BertModel, build_bert

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# Legacy boolean keys in 1_Pooling/config.json, in sentence-transformers' concatenation order.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_ST_PREFIX = "sentence_transformers.models."
_SUPPORTED_MODULES = {"Transformer", "Pooling", "Normalize"}


def _read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def read_pooling_modes(pooling_config: dict[str, Any]) -> tuple[str, ...]:
    """Pooling modes from a 1_Pooling config (legacy booleans or the newer ``pooling_mode``)."""
    raw = pooling_config.get("pooling_mode")
    if raw is None:
        modes = tuple(m for k, m in _LEGACY_POOLING_KEYS.items() if pooling_config.get(k))
        modes = modes or ("mean",)
    else:
        modes = (raw,) if isinstance(raw, str) else tuple(raw)
    for mode in modes:
        if mode not in POOLING_MODES:
            raise ValueError(f"unsupported pooling mode {mode!r}")
    return modes


def pool(
    hidden: mx.array, mask: mx.array, position_ids: mx.array, modes: Sequence[str]
) -> mx.array:
    """Attention-masked pooling of ``hidden`` (B, L, H) with right padding; ``mask`` (B, L) 0/1.

    Written without shape-dependent slicing so it can live inside a shapeless compile.
    """
    m = mask.astype(hidden.dtype)[..., None]
    count = mx.maximum(m.sum(axis=1), 1e-9)
    pos = position_ids[None, :, None]
    outputs = []
    for mode in modes:
        if mode == "cls":
            outputs.append((hidden * (pos == 0)).sum(axis=1))
        elif mode == "max":
            outputs.append(mx.where(m > 0, hidden, -mx.inf).max(axis=1))
        elif mode == "mean":
            outputs.append((hidden * m).sum(axis=1) / count)
        elif mode == "mean_sqrt_len_tokens":
            outputs.append((hidden * m).sum(axis=1) / mx.sqrt(count))
        elif mode == "weightedmean":
            w = m * (pos + 1).astype(hidden.dtype)
            outputs.append((hidden * w).sum(axis=1) / mx.maximum(w.sum(axis=1), 1e-9))
        elif mode == "lasttoken":
            last = pos == (m.sum(axis=1, keepdims=True) - 1)
            outputs.append((hidden * m * last).sum(axis=1))
        else:  # pragma: no cover - validated at load time
            raise ValueError(mode)
    return outputs[0] if len(outputs) == 1 else mx.concatenate(outputs, axis=-1)


def split_by_tokens(sorted_lengths: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """Cut ascending lengths into <= ``parts`` non-empty contiguous runs of ~equal tokens."""
    n = len(sorted_lengths)
    parts = max(1, min(parts, n))
    cumulative = np.cumsum(sorted_lengths)  # cumulative[j - 1] = tokens before cut j
    bounds = [0]
    for k in range(1, parts):
        lo, hi = bounds[-1] + 1, n - (parts - k)  # keep every part non-empty
        target = cumulative[-1] * k / parts
        cut = min(range(lo, hi + 1), key=lambda j: abs(cumulative[j - 1] - target))
        bounds.append(cut)
    bounds.append(n)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def l2_normalize(x: mx.array) -> mx.array:
    norm = mx.sqrt((x * x).sum(axis=-1, keepdims=True))
    return x / mx.maximum(norm, 1e-12)


@dataclass
class LoadedEmbeddingModel:
    """A loaded embedding model; ``embed_token_ids`` is the MLX hot path."""

    model: BertModel
    tokenizer: Tokenizer
    dimensions: int
    max_length: int
    pooling: tuple[str, ...]
    normalize: bool
    path: Path
    do_lower_case: bool = False
    pad_to_multiple: int = 1
    parallel_streams: int = 1
    compile: bool = False
    _forward: Any = field(init=False, repr=False)
    _local: threading.local = field(init=False, repr=False, default_factory=threading.local)

    def __post_init__(self) -> None:
        fn = self._forward_impl
        self._forward = mx.compile(fn) if self.compile else fn

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @property
    def pad_token_id(self) -> int:
        return self.model.config.pad_token_id

    def _forward_impl(
        self, input_ids: mx.array, position_ids: mx.array, mask: mx.array
    ) -> mx.array:
        hidden = self.model(input_ids, position_ids, mask)
        pooled = pool(hidden, mask, position_ids, self.pooling)
        return l2_normalize(pooled) if self.normalize else pooled

    # -- tokenisation -------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with [CLS]/[SEP] like sentence-transformers, never truncated."""
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        return [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]

    # -- forward ------------------------------------------------------------------------
    def validate_token_ids(self, batch: Sequence[Sequence[int]]) -> None:
        """Raise ``ValueError`` for empty, over-length or out-of-vocabulary sequences."""
        for i, ids in enumerate(batch):
            if len(ids) == 0:
                raise ValueError(f"input {i} has no tokens")
            if len(ids) > self.max_length:
                raise ValueError(
                    f"input {i} has {len(ids)} tokens, more than the maximum {self.max_length}"
                )
            lo, hi = min(ids), max(ids)
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"input {i} has token ids outside [0, {self.vocab_size})")

    def _padded_length(self, longest: int) -> int:
        mult = max(1, self.pad_to_multiple)
        padded = -(-longest // mult) * mult
        return min(padded, self.model.config.max_position_embeddings)

    def _prepare(self, batch: Sequence[Sequence[int]]) -> tuple[mx.array, mx.array, mx.array]:
        length = self._padded_length(max(len(ids) for ids in batch))
        ids = np.full((len(batch), length), self.pad_token_id, dtype=np.int32)
        mask = np.zeros((len(batch), length), dtype=np.float32)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1.0
        return mx.array(ids), mx.arange(length, dtype=mx.int32), mx.array(mask)

    def _thread_streams(self) -> list[mx.Stream]:
        # MLX streams belong to the thread that created them (and thread ids get reused).
        streams: list[mx.Stream] | None = getattr(self._local, "streams", None)
        if streams is None or len(streams) != self.parallel_streams:
            streams = [mx.new_stream(mx.cpu) for _ in range(self.parallel_streams)]
            self._local.streams = streams
        return streams

    def embed_arrays(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed token-id sequences; returns float32 ``(len(batch), dimensions)``.

        One padded forward pass (per CPU stream when ``parallel_streams > 1`` on CPU).
        """
        if not batch:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        self.validate_token_ids(batch)
        n_parts = min(self.parallel_streams, len(batch))
        if n_parts <= 1 or mx.default_device() != mx.cpu:
            out = self._forward(*self._prepare(batch))
            mx.eval(out)
            return np.array(out.astype(mx.float32))
        # CPU: run parts of the batch concurrently on separate streams (each BLAS call is
        # single-threaded, so this is how the other cores get used).  Parts are contiguous
        # runs of the length-sorted batch (little padding) with about equal token counts.
        order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
        bounds = split_by_tokens([len(batch[i]) for i in order], n_parts)
        outs = []
        for stream, (start, stop) in zip(self._thread_streams(), bounds, strict=False):
            chunk = [batch[i] for i in order[start:stop]]
            with mx.stream(stream):
                outs.append(self._forward(*self._prepare(chunk)))
        mx.eval(outs)
        stacked = np.concatenate([np.array(o.astype(mx.float32)) for o in outs], axis=0)
        result = np.empty_like(stacked)
        result[order] = stacked
        return result

    def warmup(self) -> None:
        """Trace the forward pass and build its kernels before the first request.

        With ``compile`` on Linux, MLX JIT-builds fused CPU kernels with the system C++
        compiler on first use (~15 s for this graph on 2 cores; cached under
        ``$TMPDIR/mlx``); on Metal it builds shaders.  One single-row batch and one with
        several rows per stream cover all kernel variants.
        """
        seq = [min(1, self.vocab_size - 1)] * min(8, self.max_length)
        self.embed_arrays([seq])
        self.embed_arrays([seq] * (2 * max(1, self.parallel_streams)))

    def embed_token_ids(self, batch: Sequence[Sequence[int]]) -> list[list[float]]:
        """Embed token-id sequences (one padded forward pass); plain Python floats."""
        return self.embed_arrays(batch).tolist()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Convenience: tokenize + embed (raises ``ValueError`` for over-length texts)."""
        return self.embed_token_ids(self.tokenize(texts))


def _load_tokenizer(path: Path) -> Tokenizer:
    if (path / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    elif (path / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        cfg_file = path / "tokenizer_config.json"
        lower = (
            bool(_read_json(cfg_file).get("do_lower_case", True)) if cfg_file.is_file() else True
        )
        tokenizer = BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=lower)._tokenizer
    else:
        raise FileNotFoundError(f"no tokenizer.json or vocab.txt in {path}")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _module_paths(path: Path) -> dict[str, Path]:
    """modules.json -> {module type short name: directory}; validates supported modules."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():  # plain HF BERT: mean pooling, no normalisation
        return {"Transformer": path}
    found: dict[str, Path] = {}
    for entry in _read_json(modules_file):
        kind = str(entry.get("type", "")).removeprefix(_ST_PREFIX).split(".")[-1]
        if kind not in _SUPPORTED_MODULES:
            raise ValueError(f"unsupported sentence-transformers module {entry.get('type')!r}")
        found[kind] = path / entry.get("path", "")
    return found


def load_embedding_model(
    path: Path | str,
    *,
    dtype: mx.Dtype = mx.float32,
    pad_to_multiple: int | None = None,
    parallel_streams: int | None = None,
    compile: bool | None = None,
    cpu_kernels: bool | None = None,
) -> LoadedEmbeddingModel:
    """Load a sentence-transformers BERT directory.

    ``pad_to_multiple``: pad lengths to a multiple of this (default 8 when compiled, to
    limit retracing, else 1).  ``parallel_streams``: on CPU, split each batch over this
    many MLX streams (default:
    ``min(os.cpu_count(), 4)``; ignored on GPU).  ``cpu_kernels``: arithmetic-only GELU
    and softmax (default: when MLX's default device is the CPU).  ``compile``: wrap the
    forward pass in ``mx.compile`` (default: GPU only; on the CPU it measured no faster
    and MLX builds each fused kernel with the system C++ compiler on first use, ~15-30 s
    for a fresh machine).
    """
    path = Path(path)
    config_raw = _read_json(path / "config.json")
    config = BertConfig.from_dict(config_raw)
    modules = _module_paths(path)
    weight_files = sorted(path.glob("*.safetensors"))
    if not weight_files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")

    pooling: tuple[str, ...] = ("mean",)
    if "Pooling" in modules:
        pooling_file = modules["Pooling"] / "config.json"
        if pooling_file.is_file():
            pooling = read_pooling_modes(_read_json(pooling_file))
    st_config_file = path / "sentence_bert_config.json"
    st_config = _read_json(st_config_file) if st_config_file.is_file() else {}
    max_length = int(st_config.get("max_seq_length") or config.max_position_embeddings)
    max_length = min(max_length, config.max_position_embeddings)

    on_cpu = mx.default_device() == mx.cpu
    if cpu_kernels is None:
        cpu_kernels = on_cpu
    if compile is None:
        compile = not on_cpu
    if pad_to_multiple is None:  # compiled graphs are per shape: bucket the lengths
        pad_to_multiple = 8 if compile else 1
    if parallel_streams is None:
        parallel_streams = min(os.cpu_count() or 1, 4)
    return LoadedEmbeddingModel(
        model=build_bert(config, weight_files, dtype, cpu_kernels=cpu_kernels),
        tokenizer=_load_tokenizer(path),
        dimensions=config.hidden_size * len(pooling),
        max_length=max_length,
        pooling=pooling,
        normalize="Normalize" in modules,
        path=path,
        do_lower_case=bool(st_config.get("do_lower_case", False)),
        pad_to_multiple=pad_to_multiple,
        parallel_streams=max(1, parallel_streams),
        compile=bool(compile),
    )
