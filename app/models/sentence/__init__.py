"""Sentence-embedding models (sentence-transformers layout): a small BERT encoder on
MLX and the loaded model that tokenizes, pools and normalizes."""
