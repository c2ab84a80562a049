"""Several transcriptions at once: their decoder steps run as one batch.

Each member is a :func:`~app.models.whisper.transcribe.transcription` generator. A
:meth:`TranscriptionBatch.step` first answers what members wait for outside the step
batch (encoding windows, two at a time; detecting the language, the cross-attention for word
timestamps and a pass's prompt, each alone: prompts differ in length), until every member
is decoding or done; then it feeds every decoding member's next token to the decoder as
one (rows, 1) batch (:class:`~app.models.whisper.rows.DecoderRows`). Sampling, the logit
rules and the temperature fallback stay per member
(:class:`~app.models.whisper.decoding.WindowPass`, each member with its own random
generator), so a member's tokens do not depend on who it shares steps with. One member's
failure (a caller gone: its ``on_segment`` raises) ends only that member.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from app.models.whisper.decoding import WindowPass, last_logits
from app.models.whisper.model import Whisper
from app.models.whisper.rows import DecoderRows
from app.models.whisper.tokenizer import WhisperTokenizer
from app.models.whisper.transcribe import (
    Align,
    Decode,
    Encode,
    Request,
    Transcript,
    Transcription,
    detect_language,
    encode,
)
from app.models.whisper.words import attention_weights

Finished = tuple["Member", Transcript | None, BaseException | None]
# Windows encoded at once. On the 2-core CPU, two windows together took ~0.85x the time of
# two alone, four together ~1.4x of four alone (docs/BENCHMARKS.md); not measured on a GPU.
ENCODE_BATCH = 2


class Member:
    """One transcription of a batch: its generator and the request it waits on."""

    __slots__ = ("job", "request", "window", "token")

    def __init__(self, job: Transcription) -> None:
        self.job = job
        self.request: Request | None = None
        self.window: WindowPass | None = None  # the pass it is decoding in the step batch
        self.token: int | None = None  # its next token to feed


class TranscriptionBatch:
    """Transcriptions advanced together (see the module docstring)."""

    def __init__(self, model: Whisper, tok: WhisperTokenizer, dtype: mx.Dtype = mx.float32,
                 encode_batch: int = ENCODE_BATCH) -> None:
        self.model, self.tok, self.dtype = model, tok, dtype
        self.encode_batch = max(1, encode_batch)
        self.rows = DecoderRows(model)
        self.members: list[Member] = []
        self.steps = self.row_steps = self.max_rows = 0  # batched steps, rows fed, widest
        self._ended: list[Finished] = []  # members that ended in add()

    def __len__(self) -> int:
        return len(self.members)

    def add(self, job: Transcription) -> Member:
        """A new member; runs ``job`` up to its first request (its log-mel features first:
        audio that is all silence ends there, and the next :meth:`step` reports it)."""
        member = Member(job)
        self.members.append(member)
        self._answer(member, None, self._ended)
        return member

    def drop(self, member: Member) -> None:
        """Remove ``member`` (its caller left) wherever it is."""
        self.rows.remove({member})
        if member in self.members:
            self.members.remove(member)
        self._ended = [end for end in self._ended if end[0] is not member]
        member.job.close()

    def step(self) -> list[Finished]:
        """Advance every member by one decoder step; the members that ended (with their
        transcript, or the error that ended them)."""
        finished, self._ended = self._ended, []
        self._settle(finished)
        decoding = [m for m in self.rows.keys if isinstance(m, Member)]
        if decoding:
            try:
                logits = self.rows.step([m.token for m in decoding if m.token is not None])
            except Exception as exc:  # noqa: BLE001 - the step's members end with it
                self.rows.remove(set(decoding))
                finished += [self._end(m, None, exc) for m in decoding]
                return finished
            self.steps += 1
            self.row_steps += len(decoding)
            self.max_rows = max(self.max_rows, len(decoding))
            done = []
            for member, row in zip(decoding, logits, strict=True):
                assert member.window is not None
                member.token = member.window.advance(row)
                if member.token is None:
                    done.append(member)
            self.rows.remove(set(done))
            for member in done:
                window, member.window = member.window, None
                assert window is not None
                self._answer(member, window.result(), finished)
        return finished

    def _settle(self, finished: list[Finished]) -> None:
        """Answer requests until every member decodes in the step batch or has ended."""
        while waiting := [m for m in self.members if m.window is None]:
            encodes = [m for m in waiting if isinstance(m.request, Encode)]
            if encodes:
                self._encode(encodes[: self.encode_batch], finished)
                continue
            member = waiting[0]
            request = member.request
            try:
                if isinstance(request, Decode):
                    self._join(member, request, finished)
                    continue
                if isinstance(request, Align):
                    answer: Any = attention_weights(self.model, request.features,
                                                    request.tokens, request.heads)
                else:
                    answer = detect_language(self.model, self.tok, request.features)
            except Exception as exc:  # noqa: BLE001 - this member ends, the others go on
                finished.append(self._end(member, None, exc))
                continue
            self._answer(member, answer, finished)

    def _encode(self, members: list[Member], finished: list[Finished]) -> None:
        mels = [m.request.mel for m in members if isinstance(m.request, Encode)]
        try:
            features = encode(self.model, mels, self.dtype)
        except Exception as exc:  # noqa: BLE001
            finished += [self._end(m, None, exc) for m in members]
            return
        for i, member in enumerate(members):
            self._answer(member, features[i : i + 1], finished)

    def _join(self, member: Member, request: Decode, finished: list[Finished]) -> None:
        """Run the pass's prompt alone; the member joins the step batch (or its pass ends)."""
        window = request.window
        logits, cache = self.model.decoder(mx.array([window.prompt]), request.features)
        member.window = window
        member.token = window.start(last_logits(logits, window.sot_index), last_logits(logits))
        if member.token is None:  # over at once (end of text first)
            member.window = None
            return self._answer(member, window.result(), finished)
        self.rows.add(member, cache, len(window.prompt))

    def _answer(self, member: Member, answer: Any, finished: list[Finished]) -> None:
        try:
            member.request = member.job.send(answer)
        except StopIteration as done:
            finished.append(self._end(member, done.value, None))
        except Exception as exc:  # noqa: BLE001 - e.g. its caller left (on_segment raised)
            finished.append(self._end(member, None, exc))

    def _end(self, member: Member, value: Transcript | None, error: BaseException | None
             ) -> Finished:
        if member in self.members:
            self.members.remove(member)
        member.window = None
        return member, value, error
