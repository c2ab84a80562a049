"""Speech: OpenAI's /v1/audio/speech over a text-to-speech model's worker.

The model synthesizes sentence by sentence on its worker thread, which also encodes
each sentence into the response format (:class:`~app.models.audio_codec.StreamEncoder`),
so the first sentence's audio goes out while the next is being synthesized. With
``stream_format: "sse"`` the same chunks come base64-encoded in ``speech.audio.delta``
events, then ``speech.audio.done``.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from app.core import errors
from app.core.context import RequestContext
from app.engine.base import QueueFullError
from app.engine.speech.worker import JobOutcome
from app.lifecycle.manager import ModelManager
from app.models.audio_codec import MEDIA_TYPES, StreamEncoder
from app.schemas.audio import OPENAI_VOICES, SpeechRequest


@dataclass
class AudioStream:
    """Encoded audio chunks (or SSE events) and the content type to send them as."""

    chunks: AsyncIterator[Any]
    media_type: str
    sse: bool


class SpeechHandler:
    def __init__(self, manager: ModelManager, metrics: Any = None) -> None:
        self.manager = manager
        self.metrics = metrics

    async def create(self, body: SpeechRequest, ctx: RequestContext) -> AudioStream:
        ctx.apply_body_metadata(body.metadata)
        ctx.model = body.model
        if not body.input.strip():
            raise errors.invalid_request("input must contain text to speak.", param="input")
        lease = self.manager.lease(body.model, "speech")
        managed = await lease.acquire()
        try:
            ctx.model = managed.spec.id
            voices = managed.spec.voices or managed.loaded.voices
            if body.voice not in voices and body.voice not in OPENAI_VOICES:
                raise errors.invalid_request(
                    f"Unknown voice {body.voice!r}; this model speaks with "
                    f"{', '.join(voices)} (OpenAI's voice names map to {voices[0]!r}).",
                    param="voice")
            chunks = self._chunks(body, managed, lease)
            try:  # errors (a full queue...) come before any byte is sent
                first = await anext(chunks)
            except StopAsyncIteration:  # nothing speakable (punctuation only)
                first = b""
        except BaseException:
            lease.release()
            raise
        media = "text/event-stream" if body.stream_format == "sse" else MEDIA_TYPES[
            body.response_format]
        return AudioStream(_prepend(first, chunks), media, body.stream_format == "sse")

    async def _chunks(self, body: SpeechRequest, managed: Any, lease: Any
                      ) -> AsyncIterator[Any]:
        loaded = managed.loaded
        sse = body.stream_format == "sse"

        def job(emit: Any) -> float:
            encoder = StreamEncoder(body.response_format, loaded.sample_rate)
            samples = 0
            for sentence in loaded.synthesize(body.input, speed=body.speed):
                samples += sentence.size
                data = encoder.feed(sentence)
                if data:
                    emit(data)
            tail = encoder.close()
            if tail:
                emit(tail)
            return samples / loaded.sample_rate

        try:
            try:
                async for item in managed.engine.stream(job):
                    if isinstance(item, JobOutcome):
                        if self.metrics is not None:
                            self.metrics.observe_audio(managed.spec.id, "speech", item.value,
                                                       item.compute_seconds)
                        if sse:
                            yield {"type": "speech.audio.done",
                                   "usage": {"input_characters": len(body.input),
                                             "output_audio_seconds": round(item.value, 3)}}
                    elif sse:
                        yield {"type": "speech.audio.delta",
                               "audio": base64.b64encode(item).decode()}
                    else:
                        yield item
            except QueueFullError as exc:
                raise errors.queue_full(f"The model {managed.spec.id!r} is busy: {exc}.") from exc
        finally:
            lease.release()


async def _prepend(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item
