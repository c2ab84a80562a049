"""Request and response shapes of OpenAI's /v1/audio endpoints."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
# OpenAI's voice names: served by the model's default voice.
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx",
                           "sage", "shimmer", "verse", "marin", "cedar"})


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=512)
    input: str = Field(min_length=1, max_length=4096)
    voice: str = Field("alloy", min_length=1, max_length=128)
    instructions: str | None = Field(None, max_length=4096, description="accepted, not used")
    response_format: SpeechFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    metadata: dict[str, Any] | None = None


class Transcription(BaseModel):
    """``json`` answers carry ``text`` (and ``usage``); ``verbose_json`` the rest too."""

    text: str
    task: Literal["transcribe", "translate"] | None = None
    language: str | None = None
    duration: float | None = None
    segments: list[dict[str, Any]] | None = Field(
        None, description="id, seek, start, end, text, tokens, temperature, avg_logprob, "
        "compression_ratio, no_speech_prob")
    usage: dict[str, Any] | None = None
    model: str | None = None
    htdi: dict[str, Any]
