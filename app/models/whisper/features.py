"""Whisper's log-mel features, in numpy: 16 kHz, 25 ms Hann windows every 10 ms, 80 mels.

The filter bank is librosa's default (Slaney mel scale, Slaney area normalisation), which
is what OpenAI's ``mel_filters.npz`` and faster-whisper's feature extractor hold; it is
computed here so that no file or library is needed for it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per 30 s window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
_BLOCK = N_FRAMES  # frames transformed at once


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mels = hz / (200.0 / 3)
    log_region = hz >= 1000.0
    mels[log_region] = 15.0 + np.log(hz[log_region] / 1000.0) / (np.log(6.4) / 27.0)
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    hz = mels * (200.0 / 3)
    log_region = mels >= 15.0
    hz[log_region] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[log_region] - 15.0))
    return hz


@lru_cache(maxsize=4)
def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, area-normalised (librosa's default)."""
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array([0.0]))[0],
                                   _hz_to_mel(np.array([sample_rate / 2]))[0], n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    return weights.astype(np.float32)


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    """(n_mels, frames) features of 16 kHz mono ``audio``, ``padding`` zero samples appended.

    Like Whisper: centred frames (reflection padding), the last frame dropped, log10 of the
    power clipped 8 (80 dB) below its maximum, scaled to about [-1, 1].
    """
    audio = np.asarray(audio, dtype=np.float32)
    if padding:
        audio = np.concatenate([audio, np.zeros(padding, dtype=np.float32)])
    if audio.size == 0:
        return np.zeros((n_mels, 0), dtype=np.float32)
    half = N_FFT // 2
    mode = "reflect" if audio.size > half else "constant"
    padded = np.pad(audio, half, mode=mode)
    n_frames = (padded.size - N_FFT) // HOP_LENGTH  # the last frame is dropped
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, N_FFT),
        strides=(padded.strides[0] * HOP_LENGTH, padded.strides[0]),
    )
    filters, window = mel_filters(n_mels), _window()
    log_spec = np.empty((n_mels, n_frames), dtype=np.float32)
    for start in range(0, n_frames, _BLOCK):  # bounded memory for hours of audio
        block = frames[start : start + _BLOCK]
        span = padded[start * HOP_LENGTH : (start + len(block) - 1) * HOP_LENGTH + N_FFT]
        if not span.any():  # digital silence: zero power, exactly the floor
            log_spec[:, start : start + _BLOCK] = -10.0
            continue
        spectrum = np.fft.rfft(block * window, axis=1)
        power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
        log_spec[:, start : start + _BLOCK] = np.log10(np.maximum(filters @ power.T, 1e-10))
    np.maximum(log_spec, log_spec.max() - 8.0, out=log_spec)
    return (log_spec + 4.0) / 4.0


def pad_or_trim(mel: np.ndarray, frames: int = N_FRAMES) -> np.ndarray:
    """``mel`` cut or zero-padded (in feature space, like Whisper) to ``frames`` columns."""
    if mel.shape[-1] >= frames:
        return mel[:, :frames]
    return np.pad(mel, ((0, 0), (0, frames - mel.shape[-1])))
