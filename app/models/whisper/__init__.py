"""Whisper speech recognition on MLX, from CTranslate2 (faster-whisper) model files.

``ct2`` reads ``model.bin``; ``convert`` maps it onto ``model`` (encoder, decoder, KV
cache) and caches the MLX weights; ``features`` computes log-mel features in numpy;
``tokenizer`` wraps the shipped ``tokenizer.json``; ``decoding`` decodes one 30 s window
(logit rules, temperature fallback); ``transcribe`` walks long audio window by window;
``loaded`` is what the speech worker serves.
"""
