"""Write a tiny random llama GGUF (2 layers, hidden 64) for loader tests, in milliseconds.

The weights are drawn in Hugging Face layout and q/k are permuted the way llama.cpp's
converter does, so a test can rebuild an independent reference model from the
(un-permuted) float weights. Tensor types mix F32, F16, Q8_0, Q4_0 and Q4_1, like a real
llama.cpp quantization (SmolLM2's: Q8_0 embedding, Q4_1 layers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType
from gguf.quants import dequantize, quantize
from tokenizers import Tokenizer
from tokenizers.implementations import ByteLevelBPETokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Hello world! How are you today? I am fine, thank you.",
    "user assistant system message content role 0123456789",
    "Dragons live in the mountains near a small village.",
] * 4
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 64, 2, 4, 2, 128, 256
Q = GGMLQuantizationType


@dataclass
class TinyGGUF:
    path: Path
    hf_weights: dict[str, np.ndarray]  # mlx-lm llama names, HF layout, as stored (dequantized)
    tokenizer: Tokenizer  # the tokenizer whose vocab/merges were written
    types: dict[str, str] = field(default_factory=dict)  # GGUF name -> GGML type name


def train_tokenizer() -> Tokenizer:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS, vocab_size=360, min_frequency=2, special_tokens=SPECIALS, show_progress=False
    )
    return bpe._tokenizer


def _merges(tok: Tokenizer) -> list[str]:
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k permutation (HF rotate-half layout -> interleaved pairs)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _layer_tensors(
    rng: np.random.Generator, i: int, override: dict[str, Q] | None = None
) -> list[tuple[str, str, np.ndarray, Q]]:
    """(gguf name, mlx-lm name, HF-layout weight, type) for one block."""
    head_dim = HIDDEN // HEADS
    shapes = {
        "attn_q": ("self_attn.q_proj", (HEADS * head_dim, HIDDEN), Q.Q4_1),
        "attn_k": ("self_attn.k_proj", (KV_HEADS * head_dim, HIDDEN), Q.Q4_1),
        "attn_v": ("self_attn.v_proj", (KV_HEADS * head_dim, HIDDEN), Q.F16 if i else Q.Q4_1),
        "attn_output": ("self_attn.o_proj", (HIDDEN, HEADS * head_dim), Q.Q4_1),
        "ffn_gate": ("mlp.gate_proj", (FFN, HIDDEN), Q.Q4_0),
        "ffn_up": ("mlp.up_proj", (FFN, HIDDEN), Q.Q4_0),
        "ffn_down": ("mlp.down_proj", (HIDDEN, FFN), Q.Q8_0),
    }
    override = override or {}
    out = [
        (f"blk.{i}.{g}.weight", f"model.layers.{i}.{m}.weight", rng.normal(0, 0.2, s),
         override.get(g, t))
        for g, (m, s, t) in shapes.items()
    ]  # fmt: skip
    for g, m in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
        norm = 1.0 + rng.normal(0, 0.1, HIDDEN)
        out.append((f"blk.{i}.{g}.weight", f"model.layers.{i}.{m}.weight", norm, Q.F32))
    return out


def add_shape(w: GGUFWriter, *, context: int, hidden: int, layers: int, ffn: int, heads: int,
              kv_heads: int, rope: tuple[int, float, float] | None = None) -> None:
    """The model-shape metadata every tiny GGUF carries; ``rope``: (rotary dims, RoPE
    base, RMSNorm epsilon) when the file sets them."""
    w.add_context_length(context)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    if rope is not None:
        w.add_rope_dimension_count(rope[0])
        w.add_rope_freq_base(rope[1])
        w.add_layer_norm_rms_eps(rope[2])


def write_tiny_gguf(
    path: Path,
    *,
    arch: str = "llama",
    tied: bool = True,
    seed: int = 0,
    override: dict[str, Q] | None = None,
) -> TinyGGUF:
    """Write the tiny model to ``path``; ``tied=False`` adds a Q8_0 ``output.weight``;
    ``override`` changes block tensor types (``{"ffn_up": Q.Q5_0}``)."""
    rng = np.random.default_rng(seed)
    tok = train_tokenizer()
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    types = [3 if t in SPECIALS else 1 for t in tokens]

    embed = rng.normal(0, 0.5, (len(tokens), HIDDEN))
    tensors = [("token_embd.weight", "model.embed_tokens.weight", embed, Q.Q8_0)]
    for i in range(LAYERS):
        tensors += _layer_tensors(rng, i, override)
    final_norm = 1.0 + rng.normal(0, 0.1, HIDDEN)
    tensors.append(("output_norm.weight", "model.norm.weight", final_norm, Q.F32))
    if not tied:
        head = rng.normal(0, 0.1, (len(tokens), HIDDEN))
        tensors.append(("output.weight", "lm_head.weight", head, Q.Q8_0))

    w = GGUFWriter(str(path), arch)
    add_shape(w, context=CONTEXT, hidden=HIDDEN, layers=LAYERS, ffn=FFN, heads=HEADS,
              kv_heads=KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_file_type(LlamaFileType.MOSTLY_Q4_1)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(_merges(tok))
    w.add_bos_token_id(vocab["<|im_start|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|im_end|>"])
    w.add_unk_token_id(vocab["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    hf_weights: dict[str, np.ndarray] = {}
    written: dict[str, str] = {}
    for gguf_name, mlx_name, value, kind in tensors:
        value = value.astype(np.float32)
        stored = value
        if gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            stored = permute_qk(value, HEADS if "attn_q" in gguf_name else KV_HEADS)
        if kind in (Q.F32, Q.F16):
            data = stored.astype(np.float16 if kind == Q.F16 else np.float32)
            w.add_tensor(gguf_name, data)
            back = data.astype(np.float32)
        else:
            data = quantize(stored, kind)
            w.add_tensor(gguf_name, data, raw_shape=data.shape, raw_dtype=kind)
            back = dequantize(data, kind).astype(np.float32)  # gguf-py, not MLX
        if gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            back = unpermute_qk(back, HEADS if "attn_q" in gguf_name else KV_HEADS)
        hf_weights[mlx_name] = back
        written[gguf_name] = kind.name
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return TinyGGUF(path=path, hf_weights=hf_weights, tokenizer=tok, types=written)
