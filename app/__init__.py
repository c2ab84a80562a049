"""mlx-openai-server-lab: an OpenAI- (and later Anthropic-) compatible server on MLX.

Layers, lowest first; a module imports only from its own layer or lower ones
(``tests/unit/test_layers.py`` checks it): ``core``, ``config`` and ``schemas`` →
``kernels`` → ``models`` → ``engine`` → ``lifecycle`` → ``generation`` → ``handler``
(the dialects) → ``api`` → ``main`` / ``__main__``. ``docs/ARCHITECTURE.md`` draws it.
"""
