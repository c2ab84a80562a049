#!/usr/bin/env python
"""MLX CPU matmul / mat-vec speed with the reference BLAS vs OpenBLAS (1 and 2 threads).

Each configuration runs in its own subprocess, since the BLAS is chosen once per
process, before ``mlx.core`` is imported (see ``app/core/blas/``).

    python scripts/bench_blas.py                 # off, openblas x1, openblas x2
    python scripts/bench_blas.py --threads 1 2 4 --dtypes float32 bfloat16 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, A shape, B shape): a 1024^3 matmul and SmolLM2-135M's decode mat-vecs
# (hidden 576 projections, 49152-token tied embedding / lm_head).
SHAPES = [
    ("matmul 1024x1024 @ 1024x1024", (1024, 1024), (1024, 1024)),
    ("matvec 576x576 @ 576", (576, 576), (576,)),
    ("matvec 49152x576 @ 576", (49152, 576), (576,)),
]


def worker(mode: str, threads: int | None, dtypes: list[str], min_time: float) -> dict:
    sys.path.insert(0, ROOT)
    from app.core.blas import configure_blas

    t0 = time.perf_counter()
    report = configure_blas(mode, threads)
    setup_s = time.perf_counter() - t0
    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    mapped = sorted({
        line.split()[-1] for line in open("/proc/self/maps")
        if "libopenblas" in line or "/libblas" in line
    }) if sys.platform.startswith("linux") else []
    results = []
    for dtype in dtypes:
        dt = getattr(mx, dtype)
        for name, sa, sb in SHAPES:
            a = mx.random.normal(sa).astype(dt)
            b = mx.random.normal(sb).astype(dt)
            mx.eval(a, b)
            for _ in range(2):
                mx.eval(a @ b)
            times: list[float] = []
            start = time.perf_counter()
            while len(times) < 5 or (time.perf_counter() - start < min_time and len(times) < 500):
                t = time.perf_counter()
                mx.eval(a @ b)
                times.append(time.perf_counter() - t)
            times.sort()
            med = times[len(times) // 2]
            n = sb[1] if len(sb) > 1 else 1
            flops = 2.0 * sa[0] * sa[1] * n
            results.append({"shape": name, "dtype": dtype, "ms": med * 1e3,
                            "gflops": flops / med / 1e9, "runs": len(times),
                            "mean_ms": sum(times) / len(times) * 1e3,
                            "p90_ms": times[int(len(times) * 0.9)] * 1e3})
    return {"mode": mode, "threads_arg": threads, "report": report.as_dict(),
            "setup_s": setup_s, "mapped": mapped, "results": results}


def run_config(mode: str, threads: int | None, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode,
           "--worker-threads", str(threads or 0), "--min-time", str(args.min_time),
           "--dtypes", *args.dtypes]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"mode": mode, "threads_arg": threads,
                "error": f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="OpenBLAS thread counts to compare (default: 1 2)")
    p.add_argument("--dtypes", nargs="+", default=["float32"])
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per shape (default 1)")
    p.add_argument("--json", action="store_true", help="print raw JSON results too")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-threads", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        out = worker(args.worker, args.worker_threads or None, args.dtypes, args.min_time)
        print(json.dumps(out))
        return 0

    configs = [("off", None)] + [("openblas", t) for t in args.threads]
    runs = [run_config(mode, t, args) for mode, t in configs]
    print(f"CPU: {_cpu_model()}, {os.cpu_count()} logical cores; python {sys.version.split()[0]}")
    for r in runs:
        label = r["mode"] + (f" x{r['threads_arg']}" if r["threads_arg"] else "")
        if "error" in r:
            print(f"\n[{label}] FAILED: {r['error']}")
            continue
        rep = r["report"]
        print(f"\n[{label}] backend={rep['backend']} threads={rep['threads']} "
              f"setup={r['setup_s'] * 1e3:.0f} ms\n  library: {rep['library']}"
              f"\n  detail: {rep['detail']}\n  mapped: {', '.join(r['mapped']) or '-'}")
    names = [(res["shape"], res["dtype"]) for res in next(
        (r["results"] for r in runs if "results" in r), [])]
    header = f"\n{'shape':34} {'dtype':9}" + "".join(
        f"{(r['mode'] + (' x' + str(r['threads_arg']) if r['threads_arg'] else '')):>22}"
        for r in runs)
    print(header)
    for shape, dtype in names:
        row = f"{shape:34} {dtype:9}"
        for r in runs:
            hit = next((x for x in r.get("results", [])
                        if x["shape"] == shape and x["dtype"] == dtype), None)
            row += f"{hit['gflops']:9.2f} GF/s {hit['ms']:7.2f}ms" if hit else f"{'-':>22}"
        print(row)
    print("\nmean / p90 ms (spread shows thread contention)")
    for shape, dtype in names:
        row = f"{shape:34} {dtype:9}"
        for r in runs:
            hit = next((x for x in r.get("results", [])
                        if x["shape"] == shape and x["dtype"] == dtype), None)
            row += f"{hit['mean_ms']:12.2f} /{hit['p90_ms']:8.2f}" if hit else f"{'-':>22}"
        print(row)
    if args.json:
        print(json.dumps(runs, indent=2))
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
