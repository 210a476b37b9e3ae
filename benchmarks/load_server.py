"""Load test of the web service on this machine: N concurrent uploads of short clips to a loopback
server; every one must finish and appear in the history. Prints throughput and latency percentiles.

    python benchmarks/load_server.py [--n 20] [--concurrency 20] [--workers 2] [--frames 20]
                                     [--model FILE] [--url http://127.0.0.1:PORT] [--timeout 300]

Without --url it starts `pocovid serve` itself on a free 127.0.0.1 port with a fresh data folder
and (without --model) a small phantom-trained model (seconds to build; never clinical), and stops
it at the end. --url must be a loopback address: this never loads anything else. The run is
bounded: N uploads, each polled until done or failed, everything stopped after --timeout seconds.
Exit status 0 when all N analyses are done and listed in the history, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse


def _quick_model(path: Path) -> Path:
    import torch

    torch.set_num_threads(1)
    from pocovid.models import save_model
    from pocovid.testing import quick_phantom_model

    m = quick_phantom_model(size=96, n_heads=2, steps=40)
    save_model(m, path, training_config=m.training_config, data_fingerprint="phantom", extra=m.meta["extra"])
    return path


def _start(data: Path, model: Path, workers: int, threads: int):
    from pocovid.errors import PocovidError
    from pocovid.server.local import start_server

    try:
        return start_server(data, model, None, "--workers", str(workers), "--threads", str(threads))
    except PocovidError as e:
        raise SystemExit(f"error: {e}") from None


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="uploads (default 20)")
    ap.add_argument("--concurrency", type=int, default=20, help="uploads in flight at once (default 20)")
    ap.add_argument("--workers", type=int, default=2, help="server workers when it is started here (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the started server (default 1)")
    ap.add_argument("--frames", type=int, default=20, help="frames per clip (10 fps, 256x224; default 20)")
    ap.add_argument("--model", type=Path, help="model file (default: a phantom model built here)")
    ap.add_argument("--url", help="an already running server on this machine (loopback only)")
    ap.add_argument("--timeout", type=float, default=300.0, help="stop everything after this many seconds")
    args = ap.parse_args(argv)
    if not 1 <= args.n <= 500 or not 1 <= args.concurrency <= 64:
        ap.error("--n must be 1..500 and --concurrency 1..64")
    if args.url and urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        ap.error("--url must point at this machine (127.0.0.1, localhost or ::1)")
    import httpx

    from pocovid.phantom import write_phantom

    tmp = Path(tempfile.mkdtemp(prefix="pocovid-load-"))
    clips = []
    for i in range(min(args.n, 4)):  # a few different clips, reused
        p = tmp / f"clip{i}.mp4"
        write_phantom(p, label=("covid", "pneumonia", "regular", "covid")[i], n_frames=args.frames, width=256,
                      height=224, fps=10.0, seed=1 + 3 * i, overlays=True)
        clips.append(p.read_bytes())
    proc = None
    try:
        if args.url:
            base = args.url.rstrip("/")
        else:
            model = args.model or _quick_model(tmp / "model.pt")
            proc, base = _start(tmp / "data", model, args.workers, args.threads)
        deadline = time.time() + args.timeout
        stop = threading.Event()
        lat_upload, lat_total, ids, failures = [], [], [], []
        lock = threading.Lock()

        def one(i: int):
            data = clips[i % len(clips)]
            with httpx.Client(base_url=base, timeout=60, headers={"X-Requested-With": "load_server"}) as c:
                t0 = time.perf_counter()
                r = c.post("/api/analyses", files={"file": ("clip.mp4", data)})
                t_up = time.perf_counter() - t0
                if r.status_code != 202:
                    with lock:
                        failures.append(f"upload {i}: HTTP {r.status_code} {r.text[:120]}")
                    return
                id_ = r.json()["id"]
                delay = 0.1
                while not stop.is_set() and time.time() < deadline:
                    a = c.get(f"/api/analyses/{id_}").json()
                    if a["status"] in ("done", "failed"):
                        t_all = time.perf_counter() - t0
                        with lock:
                            ids.append(id_)
                            lat_upload.append(t_up)
                            if a["status"] == "done":
                                lat_total.append(t_all)
                            else:
                                failures.append(f"analysis {id_}: failed: {a['error']}")
                        return
                    time.sleep(delay)
                    delay = min(0.5, delay * 1.5)
                with lock:
                    failures.append(f"analysis {id_}: not finished before the timeout")

        t_start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            futs = [pool.submit(one, i) for i in range(args.n)]
            for f in futs:
                try:
                    f.result(timeout=max(1.0, deadline - time.time()))
                except Exception as e:  # a timeout or a connection error: counted, the rest go on
                    failures.append(f"{type(e).__name__}: {e}")
                    stop.set()
        wall = time.perf_counter() - t_start
        with httpx.Client(base_url=base, timeout=30) as c:
            listed, offset = set(), 0
            while True:
                page = c.get("/api/analyses", params={"offset": offset, "limit": 100}).json()
                listed |= {it["id"] for it in page["items"] if it["status"] == "done"}
                offset += len(page["items"])
                if not page["items"] or offset >= page["total"]:
                    break
            health = c.get("/api/health").json()
        missing = [i for i in ids if i not in listed]
        n_done = len(lat_total)
        print(f"server: {base}  workers: {health['workers']}  clips: {args.frames} frames 256x224 mp4 "
              f"({len(clips[0]) // 1024} kB)")
        print(f"uploads: {args.n} ({args.concurrency} at once)  done: {n_done}  failed/unfinished: {len(failures)}  "
              f"in history: {n_done - len(missing)}/{n_done}")
        print(f"wall time: {wall:.1f} s  throughput: {n_done / wall:.2f} analyses/s ({60 * n_done / wall:.1f}/min)")
        print(f"upload latency (202): p50 {_pct(lat_upload, .5):.3f} s  p95 {_pct(lat_upload, .95):.3f} s")
        print(f"upload -> done latency: p50 {_pct(lat_total, .5):.2f} s  p95 {_pct(lat_total, .95):.2f} s  "
              f"max {max(lat_total) if lat_total else float('nan'):.2f} s")
        for f in failures[:10]:
            print(f"  {f}")
        return 0 if n_done == args.n and not missing and not failures else 1
    finally:
        if proc is not None:
            from pocovid.server.local import stop_server

            stop_server(proc)
        if os.environ.get("POCOVID_KEEP_LOAD_DIR") is None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
