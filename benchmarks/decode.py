"""Decode + sample throughput over a folder of recordings, and peak memory.

    python benchmarks/decode.py ../shared/data/pocus [--rate 3] [--max-frames 30] [--all-frames]

Prints frames decoded per second (every frame of every file) and frames sampled per second
(at --rate Hz, at most --max-frames a clip, as training uses them), plus peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from pocovid.media import MEDIA_EXTENSIONS, MediaError, open_media, sample_frames


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--rate", type=float, default=3.0)
    ap.add_argument("--max-frames", type=int, default=30)
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root}: no such folder", file=sys.stderr)
        return 2
    files = sorted(p for p in args.root.rglob("*") if p.suffix.lower() in MEDIA_EXTENSIONS)
    n_all = n_sampled = 0
    failed = []
    t0 = time.perf_counter()
    for p in files:
        try:
            with open_media(p) as r:
                for _ in r:
                    n_all += 1
        except MediaError as e:
            failed.append(str(e))
    t_all = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in files:
        try:
            n_sampled += len(sample_frames(p, rate_hz=args.rate, max_frames=args.max_frames))
        except MediaError:
            pass
    t_sampled = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"files: {len(files)}  failed: {len(failed)}")
    print(f"decode all frames : {n_all} frames in {t_all:.1f} s = {n_all / t_all:.0f} frames/s")
    print(f"sample {args.rate:g} Hz <= {args.max_frames}/clip: {n_sampled} frames in {t_sampled:.1f} s "
          f"= {n_sampled / t_sampled:.0f} frames/s kept ({len(files) / t_sampled:.1f} files/s)")
    print(f"peak memory (RSS): {peak_mb:.0f} MB")
    for f in failed:
        print("  failed:", f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
