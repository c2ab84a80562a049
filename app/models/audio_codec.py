"""Audio files in and out, through PyAV (FFmpeg's codecs inside the wheel, nothing from apt).

:func:`decode_audio` turns uploaded bytes (wav, mp3, flac, ogg/opus, webm, m4a...) into
mono float32 samples at the wanted rate; :func:`encode_audio` turns synthesized samples
into a file of one of OpenAI's speech formats.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import numpy as np

# OpenAI response_format -> (container, codec); "pcm" is raw 16-bit little-endian samples.
ENCODINGS: dict[str, tuple[str, str]] = {
    "mp3": ("mp3", "libmp3lame"),
    "opus": ("ogg", "libopus"),
    "aac": ("adts", "aac"),
    "flac": ("flac", "flac"),
    "wav": ("wav", "pcm_s16le"),
}
MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


class AudioDecodeError(ValueError):
    """The bytes are not audio that the bundled codecs can decode; says why."""


def decode_audio(data: bytes, sample_rate: int = 16000, *, max_seconds: float | None = None
                 ) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at ``sample_rate``; empty for a file without samples.

    ``max_seconds``: refuse (AudioDecodeError) audio longer than this, while decoding.
    """
    if not data:
        return np.zeros(0, dtype=np.float32)
    limit = None if max_seconds is None else int(max_seconds * sample_rate)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            streams = container.streams.audio
            if not streams:
                raise AudioDecodeError("the file has no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            for frame in container.decode(streams[0]):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += chunk.size
                if limit is not None and total > limit:
                    raise AudioDecodeError(f"the audio is longer than {max_seconds:.0f} seconds")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioDecodeError:
        raise
    except (av.FFmpegError, ValueError, IndexError, OSError) as exc:
        detail = (getattr(exc, "strerror", None) or str(exc)).strip() or type(exc).__name__
        raise AudioDecodeError(f"the file is not decodable audio ({detail})") from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.clip(np.concatenate(chunks).astype(np.float32, copy=False), -1.0, 1.0)


def pcm16(samples: np.ndarray) -> bytes:
    """Raw 16-bit little-endian mono samples."""
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int = 0xFFFFFFFF - 36) -> bytes:
    """A 16-bit mono WAV header; the default sizes mean "until the stream ends"."""
    riff = min(0xFFFFFFFF, data_bytes + 36)
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data_bytes))


class _Sink(io.RawIOBase):
    """A write-only file whose bytes are collected until :meth:`take` (no seeking back)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self._chunks = b"".join(self._chunks), []
        return out


class StreamEncoder:
    """Encode mono float32 chunks into one stream of format ``fmt``, bytes as they come."""

    def __init__(self, fmt: str, sample_rate: int) -> None:
        if fmt not in ENCODINGS and fmt != "pcm":
            raise ValueError(f"unsupported audio format {fmt!r}")
        self.fmt = fmt
        self.sample_rate = sample_rate
        self._started = False
        self._container = None
        if fmt not in ("pcm", "wav"):
            container_name, codec = ENCODINGS[fmt]
            self._sink = _Sink()
            self._container = av.open(self._sink, mode="w", format=container_name)
            rate = 48000 if codec == "libopus" else sample_rate  # Opus runs at 48 kHz only
            self._stream = self._container.add_stream(codec, rate=rate, layout="mono")
            sample_format = self._stream.codec_context.codec.audio_formats[0].name
            self._resampler = av.AudioResampler(format=sample_format, layout="mono", rate=rate)
            self._pts = 0

    def feed(self, samples: np.ndarray) -> bytes:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._container is None:
            head = b""
            if self.fmt == "wav" and not self._started:
                head = wav_header(self.sample_rate)
            self._started = True
            return head + pcm16(samples)
        if samples.size:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt",
                                               layout="mono")
            frame.sample_rate = self.sample_rate
            frame.time_base = Fraction(1, self.sample_rate)
            frame.pts = self._pts
            self._pts += samples.size
            self._encode(self._resampler.resample(frame))
        return self._sink.take()

    def close(self) -> bytes:
        if self._container is None:
            return b"" if self._started or self.fmt != "wav" else wav_header(self.sample_rate)
        self._encode(self._resampler.resample(None))
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()

    def _encode(self, frames: list) -> None:
        for resampled in frames:
            for packet in self._stream.encode(resampled):
                self._container.mux(packet)
