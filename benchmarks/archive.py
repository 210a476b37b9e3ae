"""An archive of recordings through `analyze_files`: the plain loop against the Ray engine.

    python benchmarks/archive.py                   # 100 short phantom clips, bundled model, Ray on 2 workers
    python benchmarks/archive.py --n 30 --workers 2 --model runs/x/model.pt

Writes N phantom recordings (short clips, mixed labels), analyses them once with the local loop
(this process, torch's default threads) and once with `engine="ray"` (one task per recording,
`workers` single-threaded workers), and prints the throughput of each, their ratio, whether the
result.json files are the same (timing fields and the creation time left out; floats exactly, and
within 1e-5), and the load average before and after (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

from pocovid.analysis import AnalysisConfig, analyze_files
from pocovid.analysis.analyze import resolve_model
from pocovid.phantom import write_phantom

LABELS = ("covid", "pneumonia", "regular")


def write_archive(folder: Path, n: int, frames: int) -> list[Path]:
    paths = []
    for k in range(n):
        p = folder / f"clip_{k:04d}.mp4"
        write_phantom(p, label=LABELS[k % 3], n_frames=frames, fps=15, width=320, height=240, seed=k)
        paths.append(p)
    return paths


def _strip(d: dict) -> dict:
    d = dict(d)
    d.pop("timings", None)
    d.pop("created", None)
    return d


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-5,
                                                                                           abs_tol=1e-9)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def differences(a, b, path="") -> list[str]:
    """Where two JSON values differ (beyond 1e-5 for floats), as 'path: a != b'."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return [d for k in a for d in differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if _close(a, b) else [f"{path}: {a!r} != {b!r}"]


def compare(local, distributed) -> tuple[int, int, int, list[str]]:
    """(exactly equal, equal within 1e-5, results compared, the differences beyond 1e-5)."""
    exact = close = n = 0
    diffs = []
    for a, b in zip(local.entries, distributed.entries):
        if not (a.ok and b.ok):
            continue
        n += 1
        ja, jb = (_strip(json.loads((e.folder / "result.json").read_text())) for e in (a, b))
        exact += ja == jb
        close += _close(ja, jb)
        diffs += [f"{Path(a.file).name}{d}" for d in differences(ja, jb)]
    return exact, close, n, diffs


def measure_archive(n: int = 100, frames: int = 20, workers: int = 2, model_spec: str = "default") -> dict:
    """The archive through the local loop and through Ray (`workers` CPUs): times, counts, result
    comparison, load averages."""
    import ray

    from pocovid.analysis.ray_engine import start_ray

    load_before = os.getloadavg()
    cfg = AnalysisConfig()
    model, _ = resolve_model(model_spec, cfg)  # as `pocovid analyze` does: torch-free from a cached graph
    with tempfile.TemporaryDirectory(prefix="pocovid-archive-") as tmp:
        tmp = Path(tmp)
        paths = write_archive(tmp / "in", n, frames)
        t0, c0 = time.perf_counter(), time.process_time()
        local = analyze_files(paths, model, tmp / "local", cfg)
        t_local = time.perf_counter() - t0
        cpu_local = time.process_time() - c0  # every thread of this process: the loop's own parallelism
        t0 = time.perf_counter()
        start_ray(workers=workers)  # as `--engine ray` starts it, timed apart from the analysis
        t_start = time.perf_counter() - t0
        t0 = time.perf_counter()
        distributed = analyze_files(paths, model, tmp / "ray", cfg, engine="ray")
        t_ray = time.perf_counter() - t0
        ray.shutdown()
        exact, close, n_compared, diffs = compare(local, distributed)
    return dict(n=n, frames=frames, workers=workers, model=model_spec, model_kind=type(model).__name__,
                t_local=t_local, cpu_local=cpu_local,
                t_ray=t_ray, t_start=t_start, ok_local=len(local.results), failed_local=len(local.failures),
                ok_ray=len(distributed.results), failed_ray=len(distributed.failures), exact=exact, close=close,
                compared=n_compared, diffs=diffs, load_before=load_before, load_after=os.getloadavg())


def print_archive(r: dict, prefix: str = "") -> None:
    n, w = r["n"], r["workers"]
    print(f"{prefix}archive: {n} phantom clips x {r['frames']} frames (320x240, 15 fps), model {r['model']} "
          f"({r['model_kind']}), {os.cpu_count()} CPUs")
    print(f"{prefix}local loop : {r['t_local']:7.1f} s  {n / r['t_local']:6.2f} recordings/s  ({r['ok_local']} ok, "
          f"{r['failed_local']} failed)")
    busy = r["cpu_local"] / r["t_local"]
    # the loop's frame pass already runs on every core, so Ray can only add the cores the rest leaves idle
    print(f"{prefix}  the loop kept {busy:.2f} of {os.cpu_count()} cores busy (CPU {r['cpu_local']:.1f} s): "
          f"{w} workers can give at most ~{min(w, os.cpu_count() or w) / busy:.2f}x")
    print(f"{prefix}ray, {w} workers: {r['t_ray']:7.1f} s  {n / r['t_ray']:6.2f} recordings/s  ({r['ok_ray']} ok, "
          f"{r['failed_ray']} failed; + {r['t_start']:.1f} s to start Ray)")
    ratio = r["t_local"] / r["t_ray"]
    print(f"{prefix}ratio ray / local: {ratio:.2f}x [target >= 1.7x: {'OK' if ratio >= 1.7 else 'MISSED'}]  "
          f"(with Ray's start-up: {r['t_local'] / (r['t_ray'] + r['t_start']):.2f}x)")
    diffs = r["diffs"]
    print(f"{prefix}result.json identical (timings and creation time left out): {r['exact']}/{r['compared']} "
          f"exactly, {r['close']}/{r['compared']} within 1e-5" + (f"; beyond: {'; '.join(diffs[:5])}" if diffs else ""))
    print(f"{prefix}load average (1, 5, 15 min): before {', '.join(f'{v:.2f}' for v in r['load_before'])}; "
          f"after {', '.join(f'{v:.2f}' for v in r['load_after'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="recordings (default 100)")
    ap.add_argument("--frames", type=int, default=20, help="frames per clip (default 20: 1.3 s at 15 fps)")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers (default 2)")
    ap.add_argument("--model", default="default", help="model file or 'default' (the bundled model)")
    args = ap.parse_args()
    print_archive(measure_archive(args.n, args.frames, args.workers, args.model))


if __name__ == "__main__":
    main()
