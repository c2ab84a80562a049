"""Request and response shapes (Pydantic) of the APIs spoken: OpenAI chat, completions,
embeddings, tokenize. Pure data; imports nothing from other ``app`` layers."""
