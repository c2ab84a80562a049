"""Tests for the MLX BERT embedding loader (tiny random model built on the fly)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from app.models.sentence.embedding import (
    LoadedEmbeddingModel,
    load_embedding_model,
    read_pooling_modes,
    split_by_tokens,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "minilm_reference.json"
_WORDS = (
    "the quick brown fox jumps over lazy dog hello world this is a test of tiny bert model "
    "embedding vectors are useful for search and retrieval apple silicon mlx array framework "
    "sentence padding batch token attention mask pooling mean max cls normalize"
).split()
TINY = {"hidden": 32, "layers": 2, "heads": 4, "intermediate": 64, "positions": 64}


def _vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    punct = list(".,!?;:'\"-()")
    return specials + letters + ["##" + c for c in letters] + punct + sorted(set(_WORDS))


def make_tiny_bert(
    root: Path,
    *,
    pooling: dict[str, Any] | None = None,
    normalize: bool = True,
    max_seq_length: int | None = 48,
    seed: int = 0,
) -> Path:
    """Write a tiny random sentence-transformers BERT directory and return its path."""
    root.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    rng = np.random.default_rng(seed)
    h, inter = TINY["hidden"], TINY["intermediate"]

    def rand(*shape: int, scale: float = 0.2) -> mx.array:
        return mx.array((rng.standard_normal(shape) * scale).astype(np.float32))

    def norm_pair(prefix: str) -> dict[str, mx.array]:
        return {f"{prefix}.weight": 1.0 + rand(h, scale=0.1), f"{prefix}.bias": rand(h)}

    weights = {
        "embeddings.word_embeddings.weight": rand(len(vocab), h, scale=1.0),
        "embeddings.position_embeddings.weight": rand(TINY["positions"], h, scale=0.5),
        "embeddings.token_type_embeddings.weight": rand(2, h, scale=0.5),
        "embeddings.position_ids": mx.arange(TINY["positions"])[None],
        "pooler.dense.weight": rand(h, h),
        "pooler.dense.bias": rand(h),
        **norm_pair("embeddings.LayerNorm"),
    }
    for i in range(TINY["layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            weights[f"{p}attention.self.{name}.weight"] = rand(h, h)
            weights[f"{p}attention.self.{name}.bias"] = rand(h)
        weights[f"{p}attention.output.dense.weight"] = rand(h, h)
        weights[f"{p}attention.output.dense.bias"] = rand(h)
        weights[f"{p}intermediate.dense.weight"] = rand(inter, h)
        weights[f"{p}intermediate.dense.bias"] = rand(inter)
        weights[f"{p}output.dense.weight"] = rand(h, inter)
        weights[f"{p}output.dense.bias"] = rand(h)
        weights.update(norm_pair(f"{p}attention.output.LayerNorm"))
        weights.update(norm_pair(f"{p}output.LayerNorm"))
    mx.save_safetensors(str(root / "model.safetensors"), weights)

    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": len(vocab),
        "hidden_size": h,
        "num_hidden_layers": TINY["layers"],
        "num_attention_heads": TINY["heads"],
        "intermediate_size": inter,
        "max_position_embeddings": TINY["positions"],
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "pad_token_id": 0,
    }
    (root / "config.json").write_text(json.dumps(config))

    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    tok.enable_truncation(8)  # like the real tokenizer.json: the loader must turn these off
    tok.enable_padding(length=16)
    tok.save(str(root / "tokenizer.json"))

    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "1_Pooling").mkdir(exist_ok=True)
    pooling = pooling or {"word_embedding_dimension": h, "pooling_mode_mean_tokens": True}
    (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if max_seq_length is not None:
        st_config = {"max_seq_length": max_seq_length, "do_lower_case": False}
        (root / "sentence_bert_config.json").write_text(json.dumps(st_config))
    return root


# -- independent numpy reference ---------------------------------------------------------
def _np_layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * w + b


def numpy_hidden_states(model_dir: Path, ids: list[int]) -> np.ndarray:
    """Unpadded BERT forward for one sequence, straight from the HF weight names."""
    w = {
        k: np.array(v, dtype=np.float64)
        for k, v in mx.load(str(model_dir / "model.safetensors")).items()
    }
    h, heads = TINY["hidden"], TINY["heads"]
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][: len(ids)]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = _np_layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    erf = np.vectorize(math.erf)
    for i in range(TINY["layers"]):
        p = f"encoder.layer.{i}."

        def lin(name: str, v: np.ndarray, p: str = p) -> np.ndarray:
            return v @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (
            lin(f"attention.self.{n}", x).reshape(len(ids), heads, -1).transpose(1, 0, 2)
            for n in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(h // heads)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = (probs @ v).transpose(1, 0, 2).reshape(len(ids), h)
        x = _np_layer_norm(
            x + lin("attention.output.dense", attn),
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
        )
        inner = lin("intermediate.dense", x)
        inner = inner * (1 + erf(inner / math.sqrt(2))) / 2
        x = _np_layer_norm(
            x + lin("output.dense", inner),
            w[p + "output.LayerNorm.weight"],
            w[p + "output.LayerNorm.bias"],
        )
    return x


SENTENCES = [
    "hello world",
    "the quick brown fox jumps over the lazy dog and this is a test of tiny bert model",
    "mlx!",
    "sentence padding batch token attention mask pooling",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> LoadedEmbeddingModel:
    return load_embedding_model(tiny_dir, parallel_streams=1)


def test_load_metadata(tiny: LoadedEmbeddingModel) -> None:
    assert tiny.dimensions == TINY["hidden"]
    assert tiny.max_length == 48
    assert tiny.pooling == ("mean",)
    assert tiny.normalize is True


def test_tokenize_adds_specials_and_never_truncates(tiny: LoadedEmbeddingModel) -> None:
    cls_id, sep_id = tiny.tokenizer.token_to_id("[CLS]"), tiny.tokenizer.token_to_id("[SEP]")
    ids = tiny.tokenize(SENTENCES)
    assert all(seq[0] == cls_id and seq[-1] == sep_id for seq in ids)
    assert len(ids[1]) > 16  # longer than the tokenizer.json truncation/padding settings
    assert len(ids[0]) == 4  # [CLS] hello world [SEP], no padding


def test_embeddings_match_numpy_reference(tiny: LoadedEmbeddingModel, tiny_dir: Path) -> None:
    ids = tiny.tokenize(SENTENCES)
    got = np.array(tiny.embed_token_ids(ids))
    assert got.shape == (len(SENTENCES), TINY["hidden"])
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    for row, seq in zip(got, ids, strict=True):
        ref = numpy_hidden_states(tiny_dir, seq).mean(0)
        np.testing.assert_allclose(row, ref / np.linalg.norm(ref), atol=1e-5)


@pytest.mark.parametrize("streams", [1, 2])
def test_padding_invariance(tiny_dir: Path, streams: int) -> None:
    model = load_embedding_model(tiny_dir, parallel_streams=streams)
    ids = model.tokenize(SENTENCES)
    batch = model.embed_arrays(ids)
    for i, seq in enumerate(ids):
        np.testing.assert_allclose(model.embed_arrays([seq])[0], batch[i], atol=1e-5)


# On the CPU, mx.compile JIT-builds ~24 kernels with g++ on a fresh machine (15-30 s).
_COMPILE_OK = mx.default_device() != mx.cpu or os.environ.get("MLX_SERVER_TEST_COMPILE") == "1"


@pytest.mark.skipif(not _COMPILE_OK, reason="CPU: set MLX_SERVER_TEST_COMPILE=1")
def test_compiled_and_exact_kernels_agree(tiny_dir: Path) -> None:
    """mx.compile and the stock GELU/SDPA kernels give the same vectors."""
    ids = load_embedding_model(tiny_dir).tokenize(SENTENCES)
    want = load_embedding_model(tiny_dir, compile=False, cpu_kernels=False).embed_arrays(ids)
    for cpu_kernels in (False, True):
        model = load_embedding_model(tiny_dir, compile=True, cpu_kernels=cpu_kernels)
        np.testing.assert_allclose(model.embed_arrays(ids), want, atol=1e-5)
        model.warmup()
        np.testing.assert_allclose(model.embed_arrays(ids[:1])[0], want[0], atol=1e-5)


def test_cpu_kernels_match_stock_kernels(tiny_dir: Path) -> None:
    ids = load_embedding_model(tiny_dir).tokenize(SENTENCES)
    stock = load_embedding_model(tiny_dir, cpu_kernels=False, parallel_streams=1)
    fast = load_embedding_model(tiny_dir, cpu_kernels=True, parallel_streams=1)
    np.testing.assert_allclose(fast.embed_arrays(ids), stock.embed_arrays(ids), atol=1e-5)


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        ({"pooling_mode_cls_token": True}, ("cls",)),
        ({"pooling_mode_max_tokens": True}, ("max",)),
        ({"pooling_mode": "mean_sqrt_len_tokens"}, ("mean_sqrt_len_tokens",)),
        ({"pooling_mode": "lasttoken"}, ("lasttoken",)),
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}, ("cls", "mean")),
    ],
)
def test_pooling_modes_honoured(
    tmp_path: Path, pooling: dict[str, Any], expected: tuple[str, ...]
) -> None:
    model_dir = make_tiny_bert(tmp_path, pooling=pooling, normalize=False)
    model = load_embedding_model(model_dir)
    assert model.pooling == expected and model.normalize is False
    assert model.dimensions == TINY["hidden"] * len(expected)
    ids = model.tokenize(SENTENCES)
    got = model.embed_arrays(ids)  # padded batch
    for row, seq in zip(got, ids, strict=True):
        hidden = numpy_hidden_states(model_dir, seq)
        parts = {
            "cls": hidden[0],
            "max": hidden.max(0),
            "mean": hidden.mean(0),
            "mean_sqrt_len_tokens": hidden.sum(0) / math.sqrt(len(seq)),
            "lasttoken": hidden[-1],
        }
        np.testing.assert_allclose(row, np.concatenate([parts[m] for m in expected]), atol=1e-4)


def test_defaults_without_optional_files(tmp_path: Path) -> None:
    model_dir = make_tiny_bert(tmp_path, max_seq_length=None, normalize=False)
    model = load_embedding_model(model_dir)
    assert model.max_length == TINY["positions"]
    norms = np.linalg.norm(model.embed_arrays(model.tokenize(SENTENCES)), axis=1)
    assert not np.allclose(norms, 1.0)


def test_split_by_tokens() -> None:
    assert split_by_tokens([5], 2) == [(0, 1)]
    assert split_by_tokens([10, 10, 10, 10], 2) == [(0, 2), (2, 4)]
    assert split_by_tokens([2, 2, 2, 2, 2, 2, 20], 2) == [(0, 6), (6, 7)]
    parts = split_by_tokens(list(range(1, 33)), 4)
    assert len(parts) == 4 and parts[0][0] == 0 and parts[-1][1] == 32
    assert all(a < b for a, b in parts)


def test_read_pooling_modes_rejects_unknown() -> None:
    assert read_pooling_modes({}) == ("mean",)
    with pytest.raises(ValueError):
        read_pooling_modes({"pooling_mode": "median"})


def test_invalid_token_ids_rejected(tiny: LoadedEmbeddingModel) -> None:
    with pytest.raises(ValueError, match="more than the maximum 48"):
        tiny.embed_token_ids([[2] + [10] * 60 + [3]])
    with pytest.raises(ValueError, match="no tokens"):
        tiny.embed_token_ids([[2, 3], []])
    with pytest.raises(ValueError, match="outside"):
        tiny.embed_token_ids([[2, tiny.vocab_size, 3]])
    assert tiny.embed_arrays([]).shape == (0, TINY["hidden"])


@pytest.mark.skipif(
    not os.environ.get("MLX_SERVER_TEST_EMBED_DIR"),
    reason="set MLX_SERVER_TEST_EMBED_DIR to the all-MiniLM-L6-v2 directory",
)
def test_real_minilm_matches_sentence_transformers() -> None:
    reference = json.loads(FIXTURE.read_text())
    model = load_embedding_model(Path(os.environ["MLX_SERVER_TEST_EMBED_DIR"]))
    assert model.dimensions == 384 and model.max_length == 256
    assert model.pooling == ("mean",) and model.normalize
    got = model.embed_arrays(model.tokenize(reference["sentences"]))
    want = np.array(reference["embeddings"], dtype=np.float64)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.999, cosine
    singles = np.stack([model.embed_arrays(model.tokenize([s]))[0] for s in reference["sentences"]])
    np.testing.assert_allclose(singles, got, atol=1e-5)
