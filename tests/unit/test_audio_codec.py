"""Audio in (every upload format OpenAI lists) and out (every speech format), via PyAV."""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import numpy as np
import pytest

from app.handler.subtitles import srt, vtt
from app.models.audio_codec import (
    AudioDecodeError,
    StreamEncoder,
    decode_audio,
    pcm16,
    wav_header,
)
from app.models.whisper.transcribe import Segment

RATE = 24000
TONE = (0.3 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.float32)


def _container(fmt: str, codec: str) -> bytes:
    """One second of tone in a container the server only reads (webm, m4a)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        rate = 48000 if codec == "libopus" else RATE
        stream = out.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(stream.codec_context.codec.audio_formats[0].name,
                                      "mono", rate)
        frame = av.AudioFrame.from_ndarray(TONE.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate, frame.time_base, frame.pts = RATE, Fraction(1, RATE), 0
        for f in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav"])
def test_speech_formats_decode_back_to_the_tone(fmt):
    encoder = StreamEncoder(fmt, RATE)
    data = encoder.feed(TONE[:RATE // 2]) + encoder.feed(TONE[RATE // 2:]) + encoder.close()
    audio = decode_audio(data, 16000)
    assert 15000 <= audio.size <= 18000  # codec priming may add a little
    spectrum = np.abs(np.fft.rfft(audio[2000:14000]))
    assert abs(np.argmax(spectrum) * 16000 / 12000 - 440) < 5


@pytest.mark.parametrize("fmt,codec", [("webm", "libopus"), ("ipod", "aac"), ("wav", "pcm_u8")])
def test_other_upload_containers(fmt, codec):
    audio = decode_audio(_container(fmt, codec), 16000)
    assert 15000 <= audio.size <= 18000 and 0.2 < float(np.abs(audio).max()) <= 1.0


def test_pcm_and_streamed_wav_header():
    encoder = StreamEncoder("pcm", RATE)
    raw = encoder.feed(TONE) + encoder.close()
    assert len(raw) == 2 * RATE
    np.testing.assert_allclose(np.frombuffer(raw, "<i2") / 32767, TONE, atol=1e-4)
    encoder = StreamEncoder("wav", RATE)
    first = encoder.feed(TONE[:100])
    assert first[:4] == b"RIFF" and first[40:44] == struct.pack("<I", 0xFFFFFFFF - 36)
    assert len(first) == 44 + 200 and encoder.feed(TONE[:100]) == pcm16(TONE[:100])
    assert wav_header(RATE, 10)[4:8] == struct.pack("<I", 46)


def test_bad_and_empty_input():
    with pytest.raises(AudioDecodeError, match="not decodable audio"):
        decode_audio(b"just some text that is not audio\n" * 50)
    with pytest.raises(AudioDecodeError):
        decode_audio(b"RIFF\x00\x00\x00\x00WAVE")
    assert decode_audio(b"").size == 0
    long = StreamEncoder("flac", 16000)
    data = long.feed(np.zeros(16000 * 20, np.float32)) + long.close()
    with pytest.raises(AudioDecodeError, match="longer than 10 seconds"):
        decode_audio(data, max_seconds=10)
    with pytest.raises(ValueError):
        StreamEncoder("ogg-vorbis", RATE)


def test_subtitles():
    seg = [Segment(0, 0, 0.0, 1.5, " Hello.", [], 0.0, -0.1, 1.0, 0.0),
           Segment(1, 0, 61.25, 3725.004, " Bye.", [], 0.0, -0.1, 1.0, 0.0)]
    assert srt(seg) == ("1\n00:00:00,000 --> 00:00:01,500\nHello.\n\n"
                        "2\n00:01:01,250 --> 01:02:05,004\nBye.\n")
    assert vtt(seg) == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello.\n\n"
                        "00:01:01.250 --> 01:02:05.004\nBye.\n")
