"""A tiny random-weight llama in mlx-lm directory format, built in about a second.

The tokenizer is a byte-level BPE trained with the ``tokenizers`` library on a few
sentences, with ChatML special tokens and a ChatML chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Hello world! This is a tiny model used in unit tests.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9, and punctuation: , . ; : ! ?",
] * 20


def _tokenizer(specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def build_tiny_llama(
    out: Path, *, seed: int = 0, context_length: int = 512, extra_specials: tuple[str, ...] = (),
    hidden_size: int = 64, layers: int = 2,
) -> Path:
    """Write config.json, model.safetensors and tokenizer files into ``out``;
    ``extra_specials``: more special tokens (e.g. fill-in-the-middle markers); a larger
    ``hidden_size`` / ``layers`` makes a model slow enough for scheduling tests."""
    out.mkdir(parents=True, exist_ok=True)
    specials = [*SPECIALS, *extra_specials]
    tok = _tokenizer(specials)
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    eos = tok.token_to_id("<|im_end|>")
    config = {
        "model_type": "llama",
        "hidden_size": hidden_size,
        "num_hidden_layers": layers,
        "intermediate_size": 2 * hidden_size,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab,
        "max_position_embeddings": context_length,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "eos_token_id": eos,
        "bos_token_id": tok.token_to_id("<|endoftext|>"),
    }
    (out / "config.json").write_text(json.dumps(config))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|endoftext|>",
                "eos_token": "<|im_end|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "chat_template": CHAT_TEMPLATE,
                "model_max_length": context_length,
                "add_bos_token": False,
            }
        )
    )
    model = llama.Model(llama.ModelArgs.from_dict(config))
    rng = np.random.default_rng(seed)
    weights = {
        name: mx.array(rng.normal(0, 0.5, size=value.shape).astype(np.float32))
        if value.ndim > 1
        else mx.ones(value.shape)
        for name, value in tree_flatten(model.parameters())
    }
    # End-of-sequence and special tokens are never the greedy pick: tests control finishing.
    head = np.array(weights["lm_head.weight"])
    for special in specials:
        head[tok.token_to_id(special)] = 0.0
    weights["lm_head.weight"] = mx.array(head)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    return out
