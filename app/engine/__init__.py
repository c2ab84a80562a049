"""What runs models: one worker thread per loaded model owns every MLX call for it.

``lm/`` is the language-model engine (admission queue, continuous batching, decode and
prefill phases, prompt-lookup speculation, prefix cache, samplers, stops, grammars);
``embedding/`` is the embedding micro-batcher; ``memory`` gives memory back when an
engine idles. Imports ``app.core``, ``app.kernels`` and ``app.models``; never the
registry, requests or dialects above.
"""
