"""The dialects: each maps its API schema onto the neutral generation core and the core's
result stream back onto its JSON or SSE shapes (``chat``, ``completions`` and what the
OpenAI ones share in ``openai_common``), plus embeddings and tokenize, which lease their
model directly. Imports ``app.generation`` and below; never ``app.api``.
"""
