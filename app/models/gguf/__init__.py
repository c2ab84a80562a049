"""GGUF files: a fast reader, per-architecture tensor mapping, conversion into mlx-lm
models (dequantize, then requantize exactly where the block format allows), and
tokenizers built from GGUF metadata."""
