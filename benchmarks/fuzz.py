"""Fuzzing the readers at length, and the real `pocovid analyze` over the hostile corpus (issue 9).

    python benchmarks/fuzz.py                     # 2000 mutations per format, corpus, CLI
    python benchmarks/fuzz.py --per-format 300 --seeds 2 --no-cli

Mutations of small valid files of every format (`pocovid.testing.fuzz`) and the hostile corpus
(`pocovid.testing.write_bad_corpus`: bombs, truncations, header lies, bad DICOMs, odd names) are
read in a child process under an address-space limit; the child measures each file's own peak
memory. Then `pocovid analyze` runs once over the corpus (peak RSS of that child). Prints counts per
outcome, peak memory per file (the largest, and which), the slowest file, and any crash. Targets:
0 crashes, exit codes 0/1 only, peak memory per file < 1.5 GB, no file over 60 s.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 2**30


def _limit(as_bytes: int):
    def f():
        resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
    return f


def _child_rows(args, as_bytes: int) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "pocovid.testing", *args], capture_output=True, env=env,
                       preexec_fn=_limit(as_bytes))
    rows = [json.loads(line) for line in r.stdout.decode().splitlines() if line.startswith("{")]
    if r.returncode != 0:
        rows.append(dict(path=" ".join(args), outcome="crash", seconds=0.0, peak_rss=0, frames=None,
                         message=f"reader child exited {r.returncode}: {r.stderr.decode(errors='replace')[-400:]}"))
    return rows


def _report(name: str, rows: list[dict]) -> int:
    counts = collections.Counter(r["outcome"] for r in rows)
    worst = max(rows, key=lambda r: r["peak_rss"])
    slow = max(rows, key=lambda r: r["seconds"])
    multi = [r for r in rows if "\n" in r["message"]]
    print(f"{name}: {len(rows)} files: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"  peak memory per file: max {worst['peak_rss'] / GB:.2f} GB ({worst['path']})")
    print(f"  slowest file: {slow['seconds']:.2f} s ({slow['path']})")
    for r in [r for r in rows if r["outcome"] == "crash"][:20]:
        print(f"  CRASH {r['path']}: {r['message'][:300]}")
    for r in multi[:5]:
        print(f"  MULTI-LINE ERROR {r['path']}")
    bad = counts["crash"] + len(multi) + (worst["peak_rss"] >= 1.5 * GB) + (slow["seconds"] >= 60)
    return bad


def _cli(corpus: Path, out: Path) -> int:
    files = [os.fsencode(corpus / n) for n in sorted(os.listdir(corpus))]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pocovid.cli", "analyze", *files, "--model", "default",
                        "--out", str(out), "--quiet"], capture_output=True, preexec_fn=_limit(16 * GB),
                       env=dict(os.environ, PYTHONWARNINGS="ignore"))
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child so far
    err = r.stderr.decode("utf-8", "backslashreplace").splitlines()
    errors = [ln for ln in err if ln.startswith("error:")]
    print(f"pocovid analyze over the corpus: {len(files)} files, exit code {r.returncode}, {len(errors)} one-line "
          f"errors, {wall:.1f} s, peak RSS of the children so far {peak / GB:.2f} GB")
    trace = any("Traceback" in ln for ln in err)
    if trace:
        print("  TRACEBACK in stderr:\n" + "\n".join(err[-20:]))
    return int(r.returncode not in (0, 1)) + int(trace) + int(peak >= 1.5 * GB)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-format", type=int, default=2000, help="mutations per format and seed")
    ap.add_argument("--seeds", type=int, default=1, help="independent mutation runs")
    ap.add_argument("--no-cli", action="store_true", help="skip pocovid analyze over the corpus")
    ap.add_argument("--as-gb", type=float, default=4.0, help="address-space limit of the reader child (GB)")
    a = ap.parse_args()
    as_bytes = int(a.as_gb * GB)
    bad = 0
    with tempfile.TemporaryDirectory(prefix="pocovid-fuzz-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        rows = []
        for seed in range(a.seeds):
            rows += _child_rows(["fuzz", str(tmp / f"fuzz{seed}"), str(a.per_format), str(seed)], as_bytes)
        print(f"({time.perf_counter() - t0:.0f} s)")
        bad += _report("mutations", rows)
        per = collections.Counter((r.get("format"), r["outcome"]) for r in rows)
        print("  per format: " + ", ".join(f"{f} {per[(f, 'ok')]}/{per[(f, 'error')]}/{per[(f, 'crash')]}"
                                           for f in sorted({f for f, _ in per})) + "  (ok/error/crash)")
        corpus_rows = _child_rows(["corpus", str(tmp / "corpus")], as_bytes)
        bad += _report("hostile corpus (read as analyze reads)", corpus_rows)
        if not a.no_cli:
            bad += _cli(tmp / "corpus", tmp / "out")
    print("OK: no crash, one-line errors, memory and time within bounds" if not bad else f"FAILED checks: {bad}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
