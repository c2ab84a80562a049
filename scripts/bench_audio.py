"""Audio benchmark: Whisper real-time factor, ours (MLX) vs faster-whisper, and TTS speed.

    python scripts/bench_audio.py --reference-python /tmp/fwvenv/bin/python
    python scripts/bench_audio.py --reference-python /tmp/fwvenv/bin/python \\
        --write-fixture tests/fixtures/whisper_reference.json

A clip is synthesized with the default hibari voice (seed 0, so it is the same every
run) from ``bench_common.ESSAY`` and cut to ``--seconds`` (60); the same 16 kHz samples
go to our MLX Whisper (the converted default ``whisper-base``, in this process, greedy
with temperature fallback) and to faster-whisper (``--reference-python``: a venv with
``faster-whisper``, CTranslate2 on the CPU, ``beam_size=1`` so both decode greedily, the
same ``model.bin``). Real-time factor = audio seconds / wall seconds of one run (above
1: faster than real time). ``--write-fixture`` records faster-whisper's words for a
shorter clip (the first sentences) for ``tests/e2e/test_audio_e2e.py``.

``--concurrent N`` (with ``--concurrent-seconds S``, 20) also transcribes N different S
second slices of the clip, first one after the other (each alone), then as one batch
whose decoder steps run together (what the speech worker does with concurrent requests),
and reports the aggregate audio seconds per wall second of both and whether the batch's
tokens equal the lone runs'.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from app.core.blas import configure_blas  # noqa: E402

configure_blas()

import numpy as np  # noqa: E402
from bench_common import ESSAY  # noqa: E402

FIXTURE_TEXT = ". ".join(ESSAY.split(". ")[:3]) + "."
FASTER_WHISPER = r"""
import json, sys, time
import numpy as np
from faster_whisper import WhisperModel
model_dir, audio_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
started = time.perf_counter()
model = WhisperModel(model_dir, device="cpu", compute_type="default", cpu_threads=threads)
loaded = time.perf_counter() - started
audio = np.load(audio_path)
model.transcribe(audio[:16000], beam_size=1, language="en")[0].__iter__().__next__
started = time.perf_counter()
segments, info = model.transcribe(audio, beam_size=1, language="en")
texts = [s.text for s in segments]
seconds = time.perf_counter() - started
print(json.dumps({"text": "".join(texts).strip(), "seconds": seconds, "load_seconds": loaded,
                  "compute_type": model.model.compute_type}))
"""
FEATURES = r"""
import json
import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor
fe = FeatureExtractor(feature_size=80)
t = np.arange(16000 * 3) / 16000
chirp = (0.5 * np.sin(2 * np.pi * (100 * t + 1300 * t**2))).astype(np.float32)
mel = fe(chirp, padding=0)
print(json.dumps({"filter_row_sums": fe.mel_filters.sum(1).tolist(),
                  "filter_peaks": fe.mel_filters.argmax(1).tolist(),
                  "chirp_mel_band_means": mel.mean(1).tolist(),
                  "chirp_mel_frame_means": mel.mean(0)[::10].tolist()}))
"""


def synthesize(text: str, seed: int = 0) -> tuple[np.ndarray, float, float]:
    """hibari's default voice at 16 kHz (through our decoder, as uploads are), the 24 kHz
    duration and the synthesis wall time."""
    from app.config import Settings
    from app.lifecycle.registry import ModelRegistry
    from app.lifecycle.speech import load_speech_model
    from app.models.audio_codec import StreamEncoder, decode_audio

    spec = ModelRegistry.defaults().get("hibari-tts")
    tts = load_speech_model(spec, Settings())
    tts.warmup()
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    parts = [tts.engine.from_ids(tts.engine.ids(ps), 1.0, rng)
             for ps in tts.engine.phonemize(text)]
    wall = time.perf_counter() - started
    samples = np.concatenate(parts)
    encoder = StreamEncoder("wav", tts.sample_rate)
    wav = encoder.feed(samples) + encoder.close()
    return decode_audio(wav), samples.size / tts.sample_rate, wall


def faster_whisper_dir(tmp: Path) -> Path:
    """A faster-whisper model folder: the joined model.bin and the wheel's small files."""
    from app.config import Settings
    from app.lifecycle.registry import ModelRegistry
    from app.models.sources.resolve import resolve_source

    settings = Settings()
    spec = ModelRegistry.defaults().get("whisper-base")
    assets = resolve_source(spec.assets, model_id=spec.id, cache_dir=settings.cache_dir,
                            offline=settings.offline, sha256=spec.assets_sha256)
    folder = tmp / "faster-whisper-base"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(assets / name, folder / name)
    model_bin = resolve_source(spec.source, model_id=spec.id, cache_dir=settings.cache_dir,
                               offline=settings.offline, file_sha256=spec.file_sha256)
    os.symlink(model_bin, folder / "model.bin")
    return folder


def run_faster_whisper(python: str, audio: np.ndarray, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = faster_whisper_dir(Path(tmp))
        np.save(Path(tmp) / "audio.npy", audio)
        out = subprocess.run([python, "-c", FASTER_WHISPER, str(folder),
                              str(Path(tmp) / "audio.npy"), str(threads)],
                             check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_ours(audio: np.ndarray) -> dict:
    from app.config import Settings
    from app.lifecycle.registry import ModelRegistry
    from app.lifecycle.speech import load_speech_model

    started = time.perf_counter()
    whisper = load_speech_model(ModelRegistry.defaults().get("whisper-base"), Settings())
    loaded = time.perf_counter() - started
    whisper.warmup()
    started = time.perf_counter()
    result = whisper.transcribe(audio, whisper.options(task="transcribe", language="en"))
    seconds = time.perf_counter() - started
    return {"text": result.text, "seconds": seconds, "load_seconds": loaded,
            "weights": whisper.weight_dtype, "windows": result.windows,
            "decoder_steps": result.decoder_steps}


def run_concurrent(audio: np.ndarray, n: int, seconds: float) -> dict:
    """N slices alone, then batched: aggregate audio seconds per second, same tokens?"""
    from app.config import Settings
    from app.lifecycle.registry import ModelRegistry
    from app.lifecycle.speech import load_speech_model

    whisper = load_speech_model(ModelRegistry.defaults().get("whisper-base"), Settings())
    whisper.warmup()
    size = int(seconds * 16000)
    stride = max(1, (audio.size - size) // max(1, n - 1))
    clips = [audio[i * stride : i * stride + size] for i in range(n)]
    total = sum(c.size for c in clips) / 16000

    def options():
        return whisper.options(task="transcribe", language="en")

    started = time.perf_counter()
    alone = [whisper.transcribe(c, options()) for c in clips]
    alone_s = time.perf_counter() - started
    started = time.perf_counter()
    batch = whisper.open_batch()
    members = [batch.add(whisper.transcription(c, options())) for c in clips]
    done: dict = {}
    while len(batch):
        for member, value, error in batch.step():
            if error is not None:
                raise error
            done[member] = value
    batched_s = time.perf_counter() - started
    together = [done[m] for m in members]

    def tokens(results: list) -> list:
        return [[s.tokens for s in t.segments] for t in results]

    return {"requests": n, "clip_seconds": round(seconds, 1), "audio_seconds": round(total, 1),
            "alone_wall_seconds": round(alone_s, 2),
            "alone_audio_seconds_per_second": round(total / alone_s, 2),
            "batched_wall_seconds": round(batched_s, 2),
            "batched_audio_seconds_per_second": round(total / batched_s, 2),
            "speedup": round(alone_s / batched_s, 2),
            "batched_steps": batch.steps, "batched_row_steps": batch.row_steps,
            "same_tokens": tokens(alone) == tokens(together),
            "same_text": [a.text for a in alone] == [t.text for t in together],
            "texts": [t.text for t in together]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-python", help="python of a venv with faster-whisper")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="faster-whisper's CPU threads")
    parser.add_argument("--write-fixture", type=Path)
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--concurrent", type=int, default=0,
                        help="also: N requests alone vs batched")
    parser.add_argument("--concurrent-seconds", type=float, default=20.0)
    parser.add_argument("--skip-single", action="store_true",
                        help="skip the single-clip real-time factor (with --concurrent)")
    args = parser.parse_args()

    if args.write_fixture:
        if not args.reference_python:
            parser.error("--write-fixture needs --reference-python")
        audio, _, _ = synthesize(FIXTURE_TEXT)
        ref = run_faster_whisper(args.reference_python, audio, args.threads)
        features = subprocess.run([args.reference_python, "-c", FEATURES], check=True,
                                  capture_output=True, text=True).stdout
        args.write_fixture.write_text(json.dumps({
            "about": "faster-whisper's transcript of hibari's default voice (seed 0) "
                     "reading `text`; recorded by scripts/bench_audio.py --write-fixture",
            "text": FIXTURE_TEXT, "seed": 0, "faster_whisper": ref["text"],
            "settings": {"beam_size": 1, "language": "en",
                         "compute_type": ref["compute_type"]},
            "features": {"about": "faster-whisper's FeatureExtractor(80): its mel filters "
                                  "and the log-mel of a 3 s chirp 100 Hz -> 7.9 kHz, amplitude 0.5",
                         **json.loads(features)},
        }) + "\n")
        print(f"wrote {args.write_fixture}: {ref['text']!r}")
        return

    audio, tts_seconds, tts_wall = synthesize(ESSAY)
    audio = audio[: int(args.seconds * 16000)]
    clip = audio.size / 16000
    report: dict = {"clip_seconds": clip,
                    "tts": {"audio_seconds": round(tts_seconds, 2),
                            "wall_seconds": round(tts_wall, 3),
                            "real_time_factor": round(tts_seconds / tts_wall, 1)}}
    if args.concurrent:
        report["concurrent"] = run_concurrent(audio, args.concurrent, args.concurrent_seconds)
    if args.skip_single:
        print(json.dumps(report, indent=1))
        return
    ours = run_ours(audio)
    report["ours"] = {**ours, "real_time_factor": round(clip / ours["seconds"], 2)}
    if args.reference_python:
        ref = run_faster_whisper(args.reference_python, audio, args.threads)
        report["faster_whisper"] = {**ref, "real_time_factor": round(clip / ref["seconds"], 2)}
        report["speed_vs_faster_whisper"] = round(ref["seconds"] / ours["seconds"], 2)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
