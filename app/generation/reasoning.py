"""Thinking (``<think>…</think>``) told apart from the answer while a choice is generated.

Models such as Qwen3, QwQ and the DeepSeek-R1 distills think before they answer. Their
chat template either opens the block in the prompt (the output starts inside it) or the
model opens it with its first token. A :class:`ReasoningSplitter` sees one choice's text
deltas and splits them into reasoning and answer pieces; the markers reach neither, and a
marker split across deltas is held back until it is complete. The answer part then goes
on to tool-call parsing like any output.
"""

from __future__ import annotations

from typing import Any

from app.generation.tool_stream import partial_suffix

Piece = tuple[bool, str]  # (is reasoning, text)


def think_markers(tokenizer: Any) -> tuple[str, str, int, int] | None:
    """(start text, end text, start id, end id) when the tokenizer has single-token think
    markers (mlx-lm infers them from the vocabulary), else None."""
    if not getattr(tokenizer, "has_thinking", False):
        return None
    start, end = tokenizer.think_start, tokenizer.think_end
    start_ids = tokenizer.think_start_tokens or ()
    end_ids = tokenizer.think_end_tokens or ()
    if not start or not end or len(start_ids) != 1 or len(end_ids) != 1:
        return None
    return start, end, int(start_ids[0]), int(end_ids[0])


def opens_thinking(prompt: list[int], start_id: int, end_id: int) -> bool:
    """Whether the prompt leaves a think block open (its template opened one)."""
    last_start = max((i for i, t in enumerate(prompt) if t == start_id), default=-1)
    last_end = max((i for i, t in enumerate(prompt) if t == end_id), default=-1)
    return last_start > last_end


class ReasoningSplitter:
    """One choice's output → reasoning and answer pieces (see the module docstring)."""

    def __init__(self, start: str, end: str, *, open_at_start: bool) -> None:
        self.start, self.end = start, end
        self.thinking = open_at_start
        self.may_open = not open_at_start  # the answer may still begin with a think block
        self.done = False  # the block ended: the rest is answer
        self._held = ""
        self._answer_began = False

    def feed(self, text: str) -> list[Piece]:
        pieces: list[Piece] = []
        self._held += text
        while self._held:
            if self.thinking:
                cut = self._held.find(self.end)
                if cut < 0:
                    keep = len(self._held) - partial_suffix(self._held, self.end)
                    pieces.append((True, self._held[:keep]))
                    self._held = self._held[keep:]
                    break
                pieces.append((True, self._held[:cut]))
                self._held = self._held[cut + len(self.end):]
                self.thinking, self.done = False, True
                continue
            if self.may_open:
                stripped = self._held.lstrip()
                if self.start.startswith(stripped):
                    break  # still may be the start marker
                self.may_open = False
                if stripped.startswith(self.start):
                    self._held = stripped[len(self.start):]
                    self.thinking = True
                    continue
            if self.done and not self._answer_began:
                self._held = self._held.lstrip()  # the blank lines after the block
                if not self._held:
                    break
            self._answer_began = True
            pieces.append((False, self._held))
            self._held = ""
        return [(kind, piece) for kind, piece in pieces if piece]

    def finish(self) -> list[Piece]:
        """What is still held when the choice ends."""
        held, self._held = self._held, ""
        if not held or (self.done and not self._answer_began and not held.strip()):
            return []
        return [(self.thinking, held)]
