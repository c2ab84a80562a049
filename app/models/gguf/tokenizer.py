"""Build a Hugging Face fast tokenizer (and mlx-lm wrapper) from GGUF tokenizer metadata.

``tokenizer.ggml.model == "gpt2"`` (byte-level BPE): the pre-tokenizer is picked from
``tokenizer.ggml.pre`` the way llama.cpp does (``llama-vocab.cpp``), so ids match llama.cpp
and the original Hugging Face tokenizer. ``"llama"`` (SentencePiece-style, with scores and
byte fallback, e.g. Gemma): see :mod:`app.models.gguf.spm`. Control and user-defined
tokens become added tokens, so ``<|im_start|>`` encodes to one id.

``metadata`` values are plain Python (ints, strings, lists), as produced by
:func:`app.models.gguf.loader.plain_metadata`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from mlx_lm.tokenizer_utils import (
    BPEStreamingDetokenizer,
    SPMStreamingDetokenizer,
    TokenizerWrapper,
)
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from app.models.gguf.spm import (
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    add_added_tokens,
    add_space_prefix,
    build_spm_tokenizer,
)

log = logging.getLogger(__name__)


_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> pre-tokenizer family (llama.cpp groups).
_PRE_FAMILIES: dict[str, str] = {
    **dict.fromkeys(["default", "gpt2", "gpt-2", "mpt", "olmo", "jais"], "gpt2"),
    **dict.fromkeys(
        ["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"],
        "digits",
    ),
    **dict.fromkeys(["llama3", "llama-bpe", "llama-v3", "falcon3", "dbrx", "smaug-bpe"], "llama3"),
    **dict.fromkeys(["qwen2", "qwen2.5", "deepseek-r1-qwen", "stablelm2"], "qwen2"),
}
# Control tokens that end a turn; llama.cpp treats these as end-of-generation too.
_EOG_TEXTS = frozenset(
    [
        "<|eot_id|>",
        "<|eom_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<end_of_turn>",
        "<EOT>",
        "<｜end▁of▁sentence｜>",
    ]
)


def _pre_tokenizer(pre: str, add_prefix_space: bool) -> tuple[pre_tokenizers.PreTokenizer, bool]:
    """The pre-tokenizer for ``tokenizer.ggml.pre`` and whether BPE ignores merges."""
    family = _PRE_FAMILIES.get(pre)
    if family is None:
        log.warning("unknown GGUF tokenizer.ggml.pre %r: using the GPT-2 pre-tokenizer", pre)
        family = "gpt2"
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    if family == "gpt2":
        return byte_level, False
    if family == "digits":
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        ), False
    regex = _LLAMA3_REGEX if family == "llama3" else _QWEN2_REGEX
    split = pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)
    raw_bytes = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=False)
    return pre_tokenizers.Sequence([split, raw_bytes]), family == "llama3"


def _token_id(tokens: Sequence[str], metadata: Mapping[str, Any], key: str) -> int | None:
    idx = metadata.get(f"tokenizer.ggml.{key}_token_id")
    return int(idx) if idx is not None and 0 <= int(idx) < len(tokens) else None


def _token(tokens: Sequence[str], metadata: Mapping[str, Any], key: str) -> str | None:
    idx = _token_id(tokens, metadata, key)
    return None if idx is None else tokens[idx]


def _post_processor(tokens: Sequence[str], metadata: Mapping[str, Any]) -> processors.PostProcessor:
    """Prepend BOS / append EOS when the GGUF asks for it (``add_bos_token``...)."""
    prefix, suffix, specials = [], [], []
    for key, flag, side in (("bos", "add_bos_token", prefix), ("eos", "add_eos_token", suffix)):
        idx = _token_id(tokens, metadata, key)
        if metadata.get(f"tokenizer.ggml.{flag}") and idx is not None:
            side.append(tokens[idx])
            specials.append((tokens[idx], idx))
    if not specials:
        return processors.ByteLevel(trim_offsets=False)
    single = " ".join([*prefix, "$A", *suffix])
    pair = " ".join([*prefix, "$A", *suffix, *prefix, "$B:1", *suffix])
    return processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=list(dict.fromkeys(specials))
    )


def build_hf_tokenizer(
    metadata: Mapping[str, Any], *, source: str = "GGUF file", context_length: int | None = None
) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` equivalent to the GGUF's tokenizer, chat template set."""
    kind = metadata.get("tokenizer.ggml.model")
    if kind == "llama":
        tok = build_spm_tokenizer(metadata, source=source)
    elif kind == "gpt2":
        tok = _build_bpe_tokenizer(metadata)
    else:
        raise ValueError(
            f"{source}: tokenizer model {kind!r} is not supported "
            "(supported: 'gpt2' byte-level BPE, 'llama' SentencePiece-style)"
        )
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
    limits = {"model_max_length": context_length} if context_length else {}
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=_token(tokens, metadata, "bos"),
        eos_token=_token(tokens, metadata, "eos"),
        unk_token=_token(tokens, metadata, "unknown"),
        pad_token=_token(tokens, metadata, "padding"),
        clean_up_tokenization_spaces=False,
        **limits,
    )
    hf.chat_template = metadata.get("tokenizer.chat_template")
    return hf


def _build_bpe_tokenizer(metadata: Mapping[str, Any]) -> Tokenizer:
    """The byte-level BPE (``gpt2``) tokenizer."""
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
    types: list[int] = list(
        metadata.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
    )
    merges: list[tuple[str, str]] = []
    for merge in metadata.get("tokenizer.ggml.merges", []):
        cut = merge.find(" ", 1)  # the first space after position 0, as llama.cpp splits
        if cut > 0:
            merges.append((merge[:cut], merge[cut + 1 :]))
    vocab = {text: i for i, text in enumerate(tokens)}
    pre = str(metadata.get("tokenizer.ggml.pre", "default"))
    pre_tok, ignore_merges = _pre_tokenizer(
        pre, bool(metadata.get("tokenizer.ggml.add_space_prefix"))
    )

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tok
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = _post_processor(tokens, metadata)
    add_added_tokens(tok, tokens, types)
    return tok


def eos_token_ids(metadata: Mapping[str, Any]) -> set[int]:
    """End-of-generation ids: the GGUF eos/eot/eom ids plus end-of-turn control tokens."""
    tokens: list[str] = list(metadata.get("tokenizer.ggml.tokens", []))
    types: list[int] = list(metadata.get("tokenizer.ggml.token_type") or [])
    ids = {
        int(metadata[f"tokenizer.ggml.{key}_token_id"])
        for key in ("eos", "eot", "eom")
        if metadata.get(f"tokenizer.ggml.{key}_token_id") is not None
    }
    ids.update(
        i
        for i, (text, kind) in enumerate(zip(tokens, types, strict=False))
        if kind == TOKEN_CONTROL and text in _EOG_TEXTS
    )
    return {i for i in ids if 0 <= i < len(tokens)}


def wrap_tokenizer(
    hf: PreTrainedTokenizerFast, eos_ids: set[int], metadata: Mapping[str, Any] | None = None
) -> TokenizerWrapper:
    """Wrap for mlx-lm: the streaming detokenizer for the tokenizer model (byte-level BPE,
    or SentencePiece for ``llama``) and, if mlx-lm can tell, tool parsing."""
    detokenizer: Any = BPEStreamingDetokenizer
    if metadata is not None and metadata.get("tokenizer.ggml.model") == "llama":
        detokenizer = partial(SPMStreamingDetokenizer, trim_space=add_space_prefix(metadata))
    tool: dict[str, Any] = {}
    try:  # private mlx-lm helpers; without them tool-call parsing is simply off
        import importlib

        from mlx_lm.tokenizer_utils import _infer_tool_parser

        name = _infer_tool_parser(hf)
        if name is not None:
            module = importlib.import_module(f"mlx_lm.tool_parsers.{name}")
            tool = {
                "tool_parser": module.parse_tool_call,
                "tool_call_start": module.tool_call_start,
                "tool_call_end": module.tool_call_end,
            }
    except (ImportError, AttributeError):
        pass
    return TokenizerWrapper(hf, detokenizer, eos_token_ids=sorted(eos_ids), **tool)


def build_tokenizer(
    metadata: Mapping[str, Any], *, source: str = "GGUF file", context_length: int | None = None
) -> tuple[TokenizerWrapper, set[int]]:
    """The mlx-lm tokenizer for a GGUF and its end-of-generation ids."""
    eos_ids = eos_token_ids(metadata)
    hf = build_hf_tokenizer(metadata, source=source, context_length=context_length)
    wrapper = wrap_tokenizer(hf, eos_ids, metadata)
    return wrapper, set(wrapper.eos_token_ids)
