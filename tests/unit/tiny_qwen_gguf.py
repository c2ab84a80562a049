"""Write a tiny random Qwen2 or Qwen3 GGUF (2 layers, hidden 64), in milliseconds.

Like Qwen2.5-Coder's llama.cpp files it mixes Q5_0, Q8_0, Q4_K, Q6_K and F32 tensors
(K-quant blocks are random bytes with sane scales, see :mod:`tests.unit.tiny_gemma_gguf`).
q/k are stored unpermuted (llama.cpp runs Qwen with NEOX RoPE). ``qwen2`` has q/k/v
biases; ``qwen3`` has per-head q/k RMSNorms and a head size that is not hidden / heads.

The tokenizer is a byte-level BPE with Qwen's special tokens (``<think>``, ``<tool_call>``
among them) and a chat template that shows tools and opens a think block unless
``enable_thinking`` is false, as Qwen3's does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType
from tokenizers import Tokenizer
from tokenizers.implementations import ByteLevelBPETokenizer

from tests.unit.tiny_gemma_gguf import write_tensors
from tests.unit.tiny_gguf import add_shape

Q = GGMLQuantizationType
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
            "<tool_call>", "</tool_call>"]  # fmt: skip
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 64, 2, 4, 2, 256, 512
HEAD_DIM = {"qwen2": HIDDEN // HEADS, "qwen3": 32}
ROPE_BASE, EPS = 1_000_000.0, 1e-6
CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>{% for t in tools %}\n{{ t | tojson }}"
    "{% endfor %}\n</tools>\nCall with <tool_call>{\"name\": ..., \"arguments\": ...}"
    "</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for tool_call in m.tool_calls or [] %}{% set tool_call = tool_call.function %}"
    "<tool_call>\n{\"name\": \"{{ tool_call.name }}\", "
    "\"arguments\": {{ tool_call.arguments | tojson }}}\n</tool_call>{% endfor %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)
CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Hello world! How are you today? I am fine, thank you.",
    "user assistant system message content role 0123456789 think tool call",
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
] * 4


@dataclass
class TinyQwen:
    path: Path
    arch: str
    tokenizer: Tokenizer
    types: dict[str, str]  # GGUF tensor name -> GGML type name


def train_tokenizer() -> Tokenizer:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS, vocab_size=400, min_frequency=2, special_tokens=SPECIALS, show_progress=False
    )
    return bpe._tokenizer


def add_bpe_vocab(w: GGUFWriter, tok: Tokenizer, *, pre: str) -> int:
    """Write ``tok`` as a GGUF ``gpt2`` tokenizer (specials as control tokens, end of text
    as BOS and pad, ``<|im_end|>`` as EOS); returns the vocabulary size."""
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(vocab["<|endoftext|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|endoftext|>"])
    w.add_add_bos_token(False)
    return len(tokens)


def _layer(rng: np.random.Generator, arch: str, i: int) -> list[tuple[str, np.ndarray | None,
                                                                     Q, tuple]]:
    """(name, float value or None for random K blocks, type, shape) for one block."""
    head_dim = HEAD_DIM[arch]
    mats = {
        "attn_q": ((HEADS * head_dim, HIDDEN), Q.Q5_0),
        "attn_k": ((KV_HEADS * head_dim, HIDDEN), Q.Q5_0),
        "attn_v": ((KV_HEADS * head_dim, HIDDEN), Q.Q8_0),
        "attn_output": ((HIDDEN, HEADS * head_dim), Q.Q5_0),
        "ffn_gate": ((FFN, HIDDEN), Q.Q5_0),
        "ffn_up": ((FFN, HIDDEN), Q.Q8_0),
        "ffn_down": ((HIDDEN, FFN), (Q.Q6_K, Q.Q4_K)[i % 2]),
    }
    out: list[tuple[str, np.ndarray | None, Q, tuple]] = []
    for name, (shape, kind) in mats.items():
        value = None if kind in (Q.Q4_K, Q.Q6_K) else rng.normal(0, 0.2, shape)
        out.append((f"blk.{i}.{name}.weight", value, kind, shape))
    if arch == "qwen2":
        for name, size in (("attn_q", HEADS), ("attn_k", KV_HEADS), ("attn_v", KV_HEADS)):
            bias = rng.normal(0, 0.5, size * head_dim)
            out.append((f"blk.{i}.{name}.bias", bias, Q.F32, bias.shape))
    else:
        for name in ("attn_q_norm", "attn_k_norm"):
            out.append((f"blk.{i}.{name}.weight", 1.0 + rng.normal(0, 0.2, head_dim), Q.F32,
                        (head_dim,)))
    for name in ("attn_norm", "ffn_norm"):
        out.append((f"blk.{i}.{name}.weight", 1.0 + rng.normal(0, 0.1, HIDDEN), Q.F32, (HIDDEN,)))
    return out


def write_tiny_qwen(path: Path, *, arch: str = "qwen2", seed: int = 0) -> TinyQwen:
    """Write the tiny model; qwen2 gets a separate ``output.weight`` (as Qwen2.5-Coder's
    GGUF has), qwen3 a tied embedding."""
    rng = np.random.default_rng(seed)
    tok = train_tokenizer()
    w = GGUFWriter(str(path), arch)
    add_shape(w, context=CONTEXT, hidden=HIDDEN, layers=LAYERS, ffn=FFN, heads=HEADS,
              kv_heads=KV_HEADS)
    if arch == "qwen3":
        w.add_key_length(HEAD_DIM[arch])
        w.add_value_length(HEAD_DIM[arch])
    w.add_layer_norm_rms_eps(EPS)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_file_type(LlamaFileType.MOSTLY_Q5_0)
    n = add_bpe_vocab(w, tok, pre="qwen2")
    w.add_chat_template(CHAT_TEMPLATE)

    tensors = [("token_embd.weight", rng.normal(0, 0.5, (n, HIDDEN)), Q.Q5_0, (n, HIDDEN))]
    for i in range(LAYERS):
        tensors += _layer(rng, arch, i)
    tensors.append(("output_norm.weight", 1.0 + rng.normal(0, 0.1, HIDDEN), Q.F32, (HIDDEN,)))
    if arch == "qwen2":
        tensors.append(("output.weight", rng.normal(0, 0.2, (n, HIDDEN)), Q.Q8_0, (n, HIDDEN)))
    return TinyQwen(path=path, arch=arch, tokenizer=tok, types=write_tensors(w, rng, tensors))
