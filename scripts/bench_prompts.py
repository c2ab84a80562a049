"""Natural benchmark prompts: questions, instructions and free writing, none asking to copy.

What a new user would send. Prompt-lookup drafts (copying from the prompt) are rarely
accepted on these, unlike the copy-heavy styles ("essay": continue the text, "rag": quote a
passage), which ``bench_serving.py`` reports as their own, labelled rows.
"""

from __future__ import annotations

import zlib

REQUESTS = [
    "I am planning a first trip to Paris in early spring with my partner. We like museums, "
    "long walks and small restaurants more than famous monuments. What neighbourhoods "
    "should we stay in, how many days do we need, and which two or three museums are worth "
    "it if we only have one afternoon for each? Please also say whether we need to book "
    "anything in advance and how to get around without a car.",
    "Explain to a curious twelve-year-old why the sky is blue during the day but red and "
    "orange at sunset. Use one everyday comparison, avoid equations, and finish with a "
    "simple experiment they could try at home with a glass of water and a torch.",
    "Write a short, friendly email to a neighbour asking whether they could water our "
    "plants for ten days while we are away in August. Offer to return the favour, mention "
    "where the key will be, and keep it under one hundred and fifty words.",
    "What are the main differences between renting and buying a home for someone who "
    "might move cities in the next five years? Give the strongest argument for each side "
    "and the two numbers I should look up before deciding.",
    "Write the opening of a story about a retired train driver who finds an old timetable "
    "in a second-hand book and decides to ride the line one last time. Focus on the "
    "morning he sets out, the weather and what he packs.",
    "My tomato plants have yellow leaves at the bottom and brown spots spreading upwards. "
    "They get six hours of sun and I water them every evening. What could be wrong, and "
    "what should I change this week?",
    "Summarise the causes of the French Revolution for a history class: three or four "
    "causes, one sentence each, then a sentence on which one historians argue about most.",
    "Give me a simple weekly plan to start running when I have never run before: three "
    "short sessions a week for the first month, how to know if I am overdoing it, and what "
    "shoes to look for.",
]
CONTEXT = [
    "A little background first.",
    "I have read a few guides already but they disagree with each other.",
    "I would prefer practical advice to general principles.",
    "Please do not assume I know the technical terms.",
    "If something depends on circumstances, say what it depends on.",
    "I am asking for myself, not for a company.",
]
TOKENS_PER_WORD = 1.3


def natural_prompt(prompt_tokens: int, tag: str | None = None) -> str:
    """A natural request of roughly ``prompt_tokens`` tokens (one of ``REQUESTS``, chosen by
    ``tag``; longer targets are padded with plain context sentences, never text to copy)."""
    head = f"[{tag}] " if tag else ""
    request = REQUESTS[zlib.crc32((tag or "").encode()) % len(REQUESTS)]
    words = round(prompt_tokens / TOKENS_PER_WORD) - len((head + request).split())
    context, i = [], 0
    while words > 0 and i < 200:
        sentence = CONTEXT[i % len(CONTEXT)]
        context.append(sentence)
        words -= len(sentence.split())
        i += 1
    return head + (" ".join(context) + " " if context else "") + request
