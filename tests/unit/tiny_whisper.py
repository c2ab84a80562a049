"""A tiny random Whisper in CTranslate2's format (``model.bin``, ``config.json``,
``tokenizer.json``), written the way CTranslate2's ``ModelSpec`` serializes models, so the
parser, the conversion and the decoding run on the real code paths in milliseconds."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

D, HEADS, LAYERS, MLP = 16, 2, 1, 64
N_AUDIO_CTX, N_TEXT_CTX, N_MELS = 1500, 96, 80
LANGUAGES = ("en", "de")
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{c}|>" for c in LANGUAGES],
            "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
            "<|nospeech|>", "<|notimestamps|>"]
N_TIMESTAMPS = 1501
N_VOCAB = 256 + len(SPECIALS) + N_TIMESTAMPS


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet (what Whisper's tokenizer.json uses)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars), strict=True))


def tiny_tokenizer() -> Tokenizer:
    vocab = {ch: i for i, ch in enumerate(_bytes_to_unicode().values())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok


def _string(value: str) -> bytes:
    raw = value.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str],
              version: int = 6) -> None:
    """CTranslate2's binary layout (``ModelSpec._serialize``)."""
    dtype_ids = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2,
                 np.dtype("int32"): 3, np.dtype("float16"): 4}
    out = [struct.pack("<I", version), _string("WhisperSpec"), struct.pack("<I", 3),
           struct.pack("<I", len(variables))]
    for name, array in variables.items():
        array = np.asarray(array, order="C")
        out += [_string(name), struct.pack("<B", array.ndim),
                *[struct.pack("<I", d) for d in array.shape],
                struct.pack("<B", dtype_ids[array.dtype]), struct.pack("<I", array.nbytes),
                array.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    path.write_bytes(b"".join(out))


def tiny_variables(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float16)

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}/gamma": (1 + w(D)).astype(np.float16), f"{prefix}/beta": w(D)}

    def linear(prefix: str, out: int, inp: int) -> dict[str, np.ndarray]:
        return {f"{prefix}/weight": w(out, inp), f"{prefix}/bias": w(out)}

    v: dict[str, np.ndarray] = {
        "encoder/num_heads": np.array(HEADS, dtype=np.int16),
        "encoder/conv1/weight": w(D, N_MELS, 3), "encoder/conv1/bias": w(D),
        "encoder/conv2/weight": w(D, D, 3), "encoder/conv2/bias": w(D),
        "encoder/position_encodings/encodings": w(N_AUDIO_CTX, D),
        "decoder/num_heads": np.array(HEADS, dtype=np.int16),
        "decoder/pre_norm": np.array(1, dtype=np.int8),
        "decoder/scale_embeddings": np.array(0, dtype=np.int8),
        "decoder/embeddings/weight": w(N_VOCAB, D),
        "decoder/position_encodings/encodings": w(N_TEXT_CTX, D),
    }
    for i in range(LAYERS):
        for side in ("encoder", "decoder"):
            p = f"{side}/layer_{i}"
            v.update(norm(f"{p}/self_attention/layer_norm"))
            v.update(linear(f"{p}/self_attention/linear_0", 3 * D, D))
            v.update(linear(f"{p}/self_attention/linear_1", D, D))
            v.update(norm(f"{p}/ffn/layer_norm"))
            v.update(linear(f"{p}/ffn/linear_0", MLP, D))
            v.update(linear(f"{p}/ffn/linear_1", D, MLP))
        p = f"decoder/layer_{i}/attention"
        v.update(norm(f"{p}/layer_norm"))
        v.update(linear(f"{p}/linear_0", D, D))
        v.update(linear(f"{p}/linear_1", 2 * D, D))
        v.update(linear(f"{p}/linear_2", D, D))
    v.update(norm("encoder/layer_norm"))
    v.update(norm("decoder/layer_norm"))
    return v


def build_tiny_whisper(folder: Path, seed: int = 0) -> Path:
    """A faster-whisper style folder with a tiny random model; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    write_ct2(folder / "model.bin", tiny_variables(seed),
              {"decoder/projection/weight": "decoder/embeddings/weight"})
    tiny_tokenizer().save(str(folder / "tokenizer.json"))
    tok = tiny_tokenizer()
    special = [tok.token_to_id(s) for s in SPECIALS]
    hints = {"suppress_ids": special[1:2] + special[4:9],  # sot, task and prompt tokens
             "suppress_ids_begin": [tok.encode(" ").ids[0], special[0]],
             "lang_ids": special[2:4]}
    (folder / "config.json").write_text(json.dumps(hints))
    return folder
