"""Transcriptions and translations: OpenAI's shapes over a Whisper model's speech worker.

The upload is decoded (PyAV, in a thread) before the model is touched, so bad audio is a
400 that names the problem and costs no model time; empty audio is an empty transcript.
``stream`` answers with OpenAI's ``transcript.text.delta`` events, one per segment as
each 30 s window is decoded, then ``transcript.text.done``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from app.config import Settings
from app.core import errors
from app.core.context import RequestContext
from app.engine.base import EngineStoppedError, QueueFullError
from app.engine.speech.worker import JobOutcome, Stepped
from app.handler.subtitles import srt, vtt
from app.lifecycle.manager import ModelManager
from app.models.audio_codec import AudioDecodeError, decode_audio
from app.models.whisper.features import SAMPLE_RATE
from app.models.whisper.languages import language_code, language_name
from app.models.whisper.transcribe import Segment, Transcript

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")


@dataclass
class TextReply:
    """A plain-text answer (``text``, ``srt``, ``vtt``)."""

    text: str
    media_type: str = "text/plain"


Reply = dict[str, Any] | TextReply | AsyncIterator[Any]  # JSON, text, or SSE events


@dataclass
class TranscriptionParams:
    model: str
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    response_format: str = "json"
    timestamp_granularities: list[str] = field(default_factory=list)
    stream: bool = False


def _segment_json(s: Segment) -> dict[str, Any]:
    return {"id": s.id, "seek": s.seek, "start": s.start, "end": s.end, "text": s.text,
            "tokens": s.tokens, "temperature": s.temperature,
            "avg_logprob": round(s.avg_logprob, 6),
            "compression_ratio": round(s.compression_ratio, 6),
            "no_speech_prob": round(s.no_speech_prob, 6)}


class TranscriptionHandler:
    def __init__(self, manager: ModelManager, settings: Settings, metrics: Any = None) -> None:
        self.manager = manager
        self.settings = settings
        self.metrics = metrics

    async def create(self, task: str, data: bytes, params: TranscriptionParams,
                     ctx: RequestContext) -> Reply:
        """``task``: ``transcribe`` or ``translate`` (into English). A stream comes back as
        an iterator of events (it holds the model's lease until it ends)."""
        ctx.model = params.model
        self._check(params, data)
        try:
            audio = await asyncio.to_thread(decode_audio, data, SAMPLE_RATE,
                                            max_seconds=self.settings.max_audio_seconds)
        except AudioDecodeError as exc:
            raise errors.invalid_request(f"Invalid audio file: {exc}.", param="file",
                                         code="invalid_audio") from exc
        capability = "translations" if task == "translate" else "transcriptions"
        lease = self.manager.lease(params.model, capability)
        managed = await lease.acquire()
        ctx.model = managed.spec.id
        try:
            loaded = managed.loaded
            language = None
            if params.language:
                language = language_code(params.language, loaded.languages)
                if language is None:
                    raise errors.invalid_request(
                        f"Unsupported language {params.language!r}; use an ISO-639-1 code "
                        f"such as 'en' ({len(loaded.languages)} are supported).",
                        param="language")
            options = loaded.options(
                task=task, language=language, temperature=params.temperature,
                word_timestamps=not params.stream and "word" in params.timestamp_granularities)
            seconds = audio.size / SAMPLE_RATE

            job = Stepped(  # shares decoder steps with the model's other transcriptions
                group=loaded, open_batch=loaded.open_batch,
                start=lambda emit: loaded.transcription(audio, options, prompt=params.prompt,
                                                        on_segment=emit))

            if params.stream:
                events = self._stream(task, managed, job, seconds, ctx, lease)
                lease = None  # the stream releases it
                return events
            if audio.size == 0:
                transcript = Transcript(text="", language=language or "en", duration=0.0)
            else:
                outcome = await self._run(managed, job)
                transcript = outcome.value
                self._observe(managed.spec.id, task, seconds, outcome)
            return self._render(task, transcript, params, ctx, managed.spec.id)
        finally:
            if lease is not None:
                lease.release()

    def _check(self, params: TranscriptionParams, data: bytes) -> None:
        if params.response_format not in FORMATS:
            raise errors.invalid_request(
                f"response_format must be one of {', '.join(FORMATS)}.", param="response_format")
        for granularity in params.timestamp_granularities:
            if granularity not in GRANULARITIES:
                raise errors.invalid_request(
                    "timestamp_granularities[] items must be 'segment' or 'word'.",
                    param="timestamp_granularities[]")
            if granularity == "word" and params.response_format != "verbose_json":
                raise errors.invalid_request(
                    "Word timestamps need response_format 'verbose_json'.",
                    param="timestamp_granularities[]")
        if not 0.0 <= params.temperature <= 1.0:
            raise errors.invalid_request("temperature must be between 0 and 1.",
                                         param="temperature")
        limit = self.settings.max_audio_bytes
        if len(data) > limit:
            raise errors.APIError(413, f"The audio file is {len(data)} bytes; the limit is "
                                  f"{limit} bytes.", param="file", code="file_too_large")

    async def _run(self, managed: Any, job: Any) -> JobOutcome:
        try:
            return await managed.engine.run(job)
        except QueueFullError as exc:
            raise errors.queue_full(f"The model {managed.spec.id!r} is busy: {exc}.") from exc
        except EngineStoppedError as exc:
            raise errors.APIError(503, str(exc), type="server_error",
                                  code="model_unloading") from exc

    def _observe(self, model: str, task: str, seconds: float, outcome: JobOutcome) -> None:
        if self.metrics is not None:
            self.metrics.observe_audio(model, task, seconds, outcome.compute_seconds)

    async def _stream(self, task: str, managed: Any, job: Any, seconds: float,
                      ctx: RequestContext, lease: Any) -> AsyncIterator[Any]:
        parts: list[str] = []
        try:
            if seconds > 0:
                async for item in managed.engine.stream(job):
                    if isinstance(item, JobOutcome):
                        self._observe(managed.spec.id, task, seconds, item)
                    elif item.text:
                        delta = item.text if parts else item.text.lstrip()
                        parts.append(delta)
                        yield {"type": "transcript.text.delta", "delta": delta}
            yield {"type": "transcript.text.done", "text": "".join(parts).strip(),
                   "usage": {"type": "duration", "seconds": round(seconds, 3)},
                   "htdi": ctx.htdi()}
        except QueueFullError as exc:
            yield errors.queue_full(f"The model {managed.spec.id!r} is busy: {exc}.")
        except EngineStoppedError as exc:
            yield errors.APIError(503, str(exc), type="server_error", code="model_unloading")
        except Exception:  # noqa: BLE001 - logged by the worker; the stream ends with an error
            yield errors.internal_error()
        finally:
            lease.release()

    @staticmethod
    def _render(task: str, transcript: Transcript, params: TranscriptionParams,
                ctx: RequestContext, model: str) -> Reply:
        fmt = params.response_format
        usage = {"type": "duration", "seconds": round(transcript.duration, 3)}
        if fmt == "text":
            return TextReply(transcript.text + "\n")
        if fmt == "srt":
            return TextReply(srt(transcript.segments), "application/x-subrip")
        if fmt == "vtt":
            return TextReply(vtt(transcript.segments), "text/vtt")
        body: dict[str, Any] = {"text": transcript.text}
        if fmt == "verbose_json":
            body = {"task": "translate" if task == "translate" else "transcribe",
                    "language": language_name(transcript.language),
                    "duration": transcript.duration, "text": transcript.text,
                    "segments": [_segment_json(s) for s in transcript.segments]}
            if "word" in params.timestamp_granularities:
                body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end}
                                 for s in transcript.segments for w in s.words]
        body["usage"] = usage
        body["model"] = model
        body["htdi"] = ctx.htdi()
        return body
