"""POST /v1/audio/transcriptions, /v1/audio/translations (multipart) and /v1/audio/speech."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from app.api.body import json_body, openai_route
from app.api.cancellation import unless_disconnected
from app.api.errors import request_context
from app.api.sse import SSE_HEADERS, sse_response
from app.handler.speech import SpeechHandler
from app.handler.transcription import TextReply, TranscriptionHandler, TranscriptionParams
from app.schemas.audio import SpeechRequest, Transcription

router = APIRouter()
# Multipart upload routes (with and without /v1): their own body limit, and the one place
# where a form content type is the API's format rather than a browser's cross-site post.
AUDIO_PATHS = tuple(prefix + path for prefix in ("/v1", "")
                    for path in ("/audio/transcriptions", "/audio/translations"))


async def _answer(request: Request, task: str, file: UploadFile,
                  params: TranscriptionParams) -> Response:
    handler: TranscriptionHandler = request.app.state.transcriptions
    ctx = request_context(request)
    data = await file.read()
    if params.stream:
        return sse_response(await handler.create(task, data, params, ctx), ctx)
    reply = await unless_disconnected(request, handler.create(task, data, params, ctx))
    if isinstance(reply, TextReply):
        return PlainTextResponse(reply.text, media_type=reply.media_type)
    return JSONResponse(reply)


@openai_route(router, "POST", "/audio/transcriptions", response_model=Transcription)
async def create_transcription(
    request: Request,
    file: Annotated[UploadFile, File(description="wav, mp3, flac, ogg/opus, webm, m4a...")],
    model: Annotated[str, Form(min_length=1, max_length=512)],
    language: Annotated[str | None, Form(max_length=32)] = None,
    prompt: Annotated[str | None, Form(max_length=4096)] = None,
    response_format: Annotated[str, Form()] = "json",
    temperature: Annotated[float, Form()] = 0.0,
    timestamp_granularities: Annotated[
        list[str], Form(alias="timestamp_granularities[]")
    ] = [],  # noqa: B006 - FastAPI copies form defaults
    stream: Annotated[bool, Form()] = False,
) -> Response:
    params = TranscriptionParams(model, language, prompt, temperature, response_format,
                                 timestamp_granularities, stream)
    return await _answer(request, "transcribe", file, params)


@openai_route(router, "POST", "/audio/translations", response_model=Transcription)
async def create_translation(
    request: Request,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form(min_length=1, max_length=512)],
    prompt: Annotated[str | None, Form(max_length=4096)] = None,
    response_format: Annotated[str, Form()] = "json",
    temperature: Annotated[float, Form()] = 0.0,
    stream: Annotated[bool, Form()] = False,
) -> Response:
    params = TranscriptionParams(model, None, prompt, temperature, response_format, [], stream)
    return await _answer(request, "translate", file, params)


@openai_route(router, "POST", "/audio/speech", response_model=None, body_model=SpeechRequest)
async def create_speech(
    request: Request, body: Annotated[SpeechRequest, json_body(SpeechRequest)]
) -> Response:
    handler: SpeechHandler = request.app.state.speech
    ctx = request_context(request)
    reply = await handler.create(body, ctx)
    if reply.sse:
        return sse_response(reply.chunks, ctx)
    return StreamingResponse(reply.chunks, media_type=reply.media_type, headers=SSE_HEADERS)
