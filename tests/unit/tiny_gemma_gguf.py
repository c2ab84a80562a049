"""Write a tiny random Gemma 3 GGUF (6 layers, hidden 64) with K-quant tensors, in ~0.1 s.

Like a llama.cpp Q4_K_M file it mixes Q4_K, Q5_K, Q6_K, Q5_0, Q8_0, Q4_0/Q4_1, F16 and
F32 tensors, stores RMSNorm weights as ``1 + w`` and leaves q/k unpermuted. gguf-py cannot
quantize K-types, so their blocks are random bytes with sane ``d``/``dmin`` fields: every
such byte string is a valid tensor, and its values are whatever GGML's formula gives.

The tokenizer is a SentencePiece BPE (byte fallback, no dummy prefix, control and
user-defined symbols, like Gemma's) trained with the ``sentencepiece`` library; its pieces,
scores and types are written as a GGUF ``llama`` tokenizer.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, LlamaFileType
from gguf.quants import quantize

Q = GGMLQuantizationType
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, CONTEXT = 64, 6, 4, 2, 64, 256, 128
WINDOW, ROPE_BASE, EPS = 4, 1_000_000.0, 1e-6
CONTROL = ["<start_of_turn>", "<end_of_turn>"]
USER_DEFINED = ["\n", "\n\n"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I am fine, thank you.",
    "héllo wörld, 0123456789 numbers and more numbers",
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>",
    "Dragons live in the mountains near a small village.",
] * 20


@dataclass
class TinyGemma:
    path: Path
    sp: spm.SentencePieceProcessor
    types: dict[str, str]  # GGUF tensor name -> GGML type name


def train_sentencepiece() -> spm.SentencePieceProcessor:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=420, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=False, normalization_rule_name="identity",
        remove_extra_whitespaces=False, control_symbols=CONTROL,
        user_defined_symbols=USER_DEFINED, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def random_kquant(rng: np.random.Generator, rows: int, cols: int, kind: Q) -> np.ndarray:
    """Random blocks of a K-type with small, sane scales (values within about +-0.3)."""
    block, size = GGML_QUANT_SIZES[kind]
    data = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    half = lambda v: np.full(data.shape[:2], v, np.float16).view(np.uint8).reshape(  # noqa: E731
        *data.shape[:2], 2
    )
    if kind in (Q.Q4_K, Q.Q5_K):
        levels = 15 if kind == Q.Q4_K else 31
        d = 0.3 / (63 * levels)
        data[..., 0:2] = half(d)
        data[..., 2:4] = half(d * levels / 2)  # dmin: centres the values around 0
    elif kind == Q.Q6_K:
        data[..., 208:210] = half(0.3 / (127 * 32))
    else:
        raise ValueError(kind)
    return data.reshape(rows, -1)


def _layer(rng: np.random.Generator, i: int) -> list[tuple[str, np.ndarray | None, Q, tuple]]:
    """(name, float value or None for random K blocks, type, shape) for one block."""
    down = (Q.Q6_K, Q.Q5_K)[i % 2]
    mats = {
        "attn_q": ((HEADS * HEAD_DIM, HIDDEN), Q.Q5_0),
        "attn_k": ((KV_HEADS * HEAD_DIM, HIDDEN), Q.Q5_0 if i % 3 else Q.Q4_1),
        "attn_v": ((KV_HEADS * HEAD_DIM, HIDDEN), Q.Q8_0 if i % 2 else Q.F16),
        "attn_output": ((HIDDEN, HEADS * HEAD_DIM), Q.Q4_K),
        "ffn_gate": ((FFN, HIDDEN), Q.Q5_0),
        "ffn_up": ((FFN, HIDDEN), Q.Q4_0),
        "ffn_down": ((HIDDEN, FFN), down),
    }
    out = []
    for name, (shape, kind) in mats.items():
        value = None if kind in (Q.Q4_K, Q.Q5_K, Q.Q6_K) else rng.normal(0, 0.15, shape)
        out.append((f"blk.{i}.{name}.weight", value, kind, shape))
    norms = {"attn_norm": HIDDEN, "post_attention_norm": HIDDEN, "ffn_norm": HIDDEN,
             "post_ffw_norm": HIDDEN, "attn_q_norm": HEAD_DIM, "attn_k_norm": HEAD_DIM}
    for name, dim in norms.items():  # stored as 1 + w, as llama.cpp's converter writes
        out.append((f"blk.{i}.{name}.weight", 1.0 + rng.normal(0, 0.2, dim), Q.F32, (dim,)))
    return out


def write_tiny_gemma(path: Path, *, seed: int = 0) -> TinyGemma:
    rng = np.random.default_rng(seed)
    sp = train_sentencepiece()
    n = sp.vocab_size()
    tokens = [sp.IdToPiece(i) for i in range(n)]
    scores = [sp.GetScore(i) for i in range(n)]
    kinds = [
        3 if sp.IsControl(i) else 2 if sp.IsUnknown(i) else 6 if sp.IsByte(i)
        else 4 if tokens[i] in USER_DEFINED else 1
        for i in range(n)
    ]  # fmt: skip

    w = GGUFWriter(str(path), "gemma3")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_layer_norm_rms_eps(EPS)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_sliding_window(WINDOW)
    w.add_file_type(LlamaFileType.MOSTLY_Q4_K_M)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(kinds)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)

    # small enough that the blocks, not the tied embedding of the last token, decide
    tensors = [("token_embd.weight", rng.normal(0, 0.1, (n, HIDDEN)), Q.Q8_0, (n, HIDDEN))]
    for i in range(LAYERS):
        tensors += _layer(rng, i)
    tensors.append(("output_norm.weight", 1.0 + rng.normal(0, 0.2, HIDDEN), Q.F32, (HIDDEN,)))
    return TinyGemma(path=path, sp=sp, types=write_tensors(w, rng, tensors))


def write_tensors(w: GGUFWriter, rng: np.random.Generator,
                  tensors: list[tuple[str, np.ndarray | None, Q, tuple]]) -> dict[str, str]:
    """Add ``(name, value or None for random K-quant blocks, type, shape)`` tensors, write
    and close the file; returns {name: type name}."""
    written: dict[str, str] = {}
    for name, value, kind, shape in tensors:
        if value is None:
            data = random_kquant(rng, shape[0], shape[1], kind)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=kind)
        elif kind in (Q.F32, Q.F16):
            w.add_tensor(name, value.astype(np.float32 if kind == Q.F32 else np.float16))
        else:
            data = quantize(value.astype(np.float32), kind)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=kind)
        written[name] = kind.name
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written
