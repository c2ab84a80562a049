"""Long audio in 30 s windows: segments with timestamps, previous text as the next prompt.

The window advances to the last complete timestamp pair the model emitted (or by the whole
window when it ended on a single timestamp or emitted none), as Whisper does; a window
that is silence (no-speech probability over the threshold and an unsure decode) adds
nothing. Windows whose samples are all below :data:`SILENCE_PEAK` are skipped without
running the model, which keeps an hour of silence cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np

from app.models.whisper.decoding import (
    DecodeOptions,
    WindowPass,
    WindowResult,
    decode_window,
    needs_fallback,
)
from app.models.whisper.features import (
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    log_mel_spectrogram,
    pad_or_trim,
)
from app.models.whisper.model import Whisper, WhisperDims
from app.models.whisper.tokenizer import TIME_PRECISION, WhisperTokenizer
from app.models.whisper.words import (
    Word,
    alignment_heads,
    attach_words,
    attention_weights,
    find_words,
    limit_durations,
    merge_punctuation,
)

SILENCE_PEAK = 10 ** (-60 / 20)  # -60 dBFS: digital silence and dither, no speech
INPUT_STRIDE = 2  # mel frames per encoder position (and per timestamp step of 20 ms)
PROMPT_RESET_TEMPERATURE = 0.5  # a window that needed sampling does not prompt the next


@dataclass
class Segment:
    id: int
    seek: int  # mel frame of the window it came from
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] = field(default_factory=list)  # with word timestamps only


@dataclass
class Transcript:
    text: str
    language: str
    duration: float
    segments: list[Segment] = field(default_factory=list)
    windows: int = 0
    decoder_steps: int = 0


def detect_language(model: Whisper, tok: WhisperTokenizer, features: mx.array) -> str:
    """The likeliest language token after start-of-transcript, as a code (``en``)."""
    logits, _ = model.decoder(mx.array([[tok.sot]]), features)
    scores = np.array(logits[0, 0].astype(mx.float32))
    codes = list(tok.languages)
    ids = [tok.languages[c] for c in codes]
    return codes[int(np.argmax(scores[ids]))]


def _split_segments(tokens: list[int], tok: WhisperTokenizer, offset: float, window: float
                    ) -> tuple[list[tuple[float, float, list[int]]], int | None]:
    """(start, end, tokens) per timestamp pair; the frames to advance (None: whole window)."""
    begin = tok.timestamp_begin
    is_stamp = [t >= begin for t in tokens]
    single_end = len(tokens) >= 2 and is_stamp[-1] and not is_stamp[-2]
    cuts = [i for i in range(1, len(tokens)) if is_stamp[i] and is_stamp[i - 1]]
    if cuts:
        if single_end:
            cuts.append(len(tokens))
        out, last = [], 0
        for cut in cuts:
            piece = tokens[last:cut]
            start = offset + (piece[0] - begin) * TIME_PRECISION
            end = offset + (piece[-1] - begin) * TIME_PRECISION
            out.append((start, end, piece))
            last = cut
        if single_end:
            return out, None
        return out, (tokens[last - 1] - begin) * INPUT_STRIDE
    duration = window
    stamps = [t for t in tokens if t >= begin]
    if stamps and stamps[-1] != begin:
        duration = (stamps[-1] - begin) * TIME_PRECISION
    return [(offset, offset + duration, tokens)], None


@dataclass
class Encode:
    """Request: encode one window's log-mel (frames, n_mels); answer: features (1, ctx, state)."""

    mel: np.ndarray


@dataclass
class Language:
    """Request: the language of encoded ``features``; answer: a code (``en``)."""

    features: mx.array


@dataclass
class Decode:
    """Request: run ``window`` over ``features``; answer: its :class:`WindowResult`."""

    features: mx.array
    window: WindowPass


@dataclass
class Align:
    """Request: the alignment heads' cross-attention logits of ``tokens`` over
    ``features``; answer: (heads, tokens, frames) numpy (see ``words.attention_weights``)."""

    features: mx.array
    tokens: list[int]
    heads: list[tuple[int, int]]


Request = Encode | Language | Decode | Align
Transcription = Generator[Request, Any, Transcript]


def transcription(
    dims: WhisperDims,
    tok: WhisperTokenizer,
    audio: np.ndarray,
    options: DecodeOptions,
    *,
    prompt: str | None = None,
    condition_on_previous_text: bool = True,
    on_segment: Callable[[Segment], None] | None = None,
) -> Transcription:
    """Transcribe (or translate) 16 kHz mono ``audio`` window by window, as a generator of
    model requests: :func:`transcribe` answers them one by one, a
    :class:`~app.models.whisper.batch.TranscriptionBatch` together with other requests'."""
    duration = audio.size / (N_SAMPLES / 30)
    mel = log_mel_spectrogram(audio, dims.n_mels, padding=N_SAMPLES)
    content_frames = mel.shape[-1] - N_FRAMES
    rng = np.random.default_rng(options.seed)
    all_tokens: list[int] = tok.encode(" " + prompt.strip()) if prompt and prompt.strip() else []
    reset_since = 0
    segments: list[Segment] = []
    language = options.language
    windows = steps = 0
    seek = 0
    last_speech = 0.0  # end of the last word (word timestamps)
    while seek < content_frames:
        size = min(N_FRAMES, content_frames - seek)
        samples = audio[seek * HOP_LENGTH : (seek + size) * HOP_LENGTH]
        if samples.size == 0 or float(np.max(np.abs(samples))) < SILENCE_PEAK:
            seek += size
            continue
        features = yield Encode(pad_or_trim(mel[:, seek : seek + size]).T)
        if language is None:
            language = yield Language(features)
            options.language = language
        result: WindowResult | None = None
        for temperature in options.temperatures:
            window = WindowPass(tok, options, all_tokens[reset_since:], temperature, rng,
                                dims.n_vocab, dims.n_text_ctx)
            result = yield Decode(features, window)
            steps += result.steps
            if not needs_fallback(result, options):
                break
        assert result is not None
        windows += 1
        if (options.no_speech_threshold is not None
                and result.no_speech_prob > options.no_speech_threshold
                and (options.logprob_threshold is None
                     or result.avg_logprob < options.logprob_threshold)):
            seek += size
            continue
        offset = seek / FRAMES_PER_SECOND
        pieces, advance = _split_segments(result.tokens, tok, offset, size / FRAMES_PER_SECOND)
        new: list[Segment] = []
        for start, end, piece in pieces:
            text = tok.decode(piece)
            if not text.strip():
                continue
            new.append(Segment(
                id=len(segments) + len(new), seek=seek, start=round(min(start, duration), 3),
                end=round(min(max(end, start), duration), 3), text=text,
                tokens=[t for t in piece if t < tok.eot],
                temperature=result.temperature, avg_logprob=result.avg_logprob,
                compression_ratio=result.compression_ratio,
                no_speech_prob=result.no_speech_prob,
            ))
        if options.word_timestamps and new:
            text_tokens = [t for s in new for t in s.tokens]
            sot = tok.sot_sequence(language, options.task, timestamps=True)
            weights = yield Align(features, [*sot, tok.no_timestamps, *text_tokens, tok.eot],
                                  alignment_heads(dims, options.alignment_heads))
            found = find_words(weights, len(sot), text_tokens, size, tok, language)
            median = limit_durations(found)
            last_speech = attach_words(new, merge_punctuation(found), offset, median,
                                       last_speech)
        for segment in new:
            segments.append(segment)
            all_tokens.extend(segment.tokens)
            if on_segment is not None:
                on_segment(segment)
        seek += size if advance is None or advance <= 0 else advance
        if not condition_on_previous_text or result.temperature > PROMPT_RESET_TEMPERATURE:
            reset_since = len(all_tokens)
    text = "".join(s.text for s in segments).strip()
    return Transcript(text=text, language=language or "en", duration=round(duration, 3),
                      segments=segments, windows=windows, decoder_steps=steps)


def encode(model: Whisper, mels: list[np.ndarray], dtype: mx.Dtype) -> mx.array:
    """Encoder features (len(mels), ctx, state) of windows' log-mels (frames, n_mels)."""
    return model.encoder(mx.array(np.stack(mels)).astype(dtype))


def run_alone(model: Whisper, tok: WhisperTokenizer, job: Transcription,
              dtype: mx.Dtype = mx.float32) -> Transcript:
    """Answer a :func:`transcription`'s requests one at a time (no batching)."""
    answer: Any = None
    while True:
        try:
            request = job.send(answer)
        except StopIteration as done:
            return done.value
        if isinstance(request, Encode):
            answer = encode(model, [request.mel], dtype)
        elif isinstance(request, Language):
            answer = detect_language(model, tok, request.features)
        elif isinstance(request, Align):
            answer = attention_weights(model, request.features, request.tokens, request.heads)
        else:
            answer = decode_window(model, request.features, request.window)


def transcribe(model: Whisper, tok: WhisperTokenizer, audio: np.ndarray,
               options: DecodeOptions, *, dtype: mx.Dtype = mx.float32, **kwargs: Any
               ) -> Transcript:
    """:func:`transcription` of ``audio``, decoded alone."""
    return run_alone(model, tok, transcription(model.dims, tok, audio, options, **kwargs), dtype)
