"""Many recordings at once: one folder each and a summary table; a bad file never stops the batch."""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from pocovid.analysis.analyze import AnalysisConfig, analyze_recording, resolve_model
from pocovid.errors import PocovidError


def _unique_dir(out_dir: Path, stem: str, taken: set[str]) -> Path:
    base = re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).strip("._") or "recording"
    name, k = base, 2
    while name in taken:  # unique within the batch; a folder left by an earlier run is reused
        name = f"{base}-{k}"
        k += 1
    taken.add(name)
    return out_dir / name


SUMMARY_COLUMNS = ["file", "folder", "status", "label", "probabilities", "uncertainty", "uncertainty_method",
                   "review_recommended", "out_of_distribution", "frames_disagree", "n_frames", "error"]


def analyze_files(paths, model, out_dir: str | os.PathLike, config: AnalysisConfig | None = None,
                  progress: Callable[[int, int, str], None] | None = None) -> tuple[list[dict], list[str]]:
    """Analyse many recordings: each gets its own folder `out_dir/<file stem>` (made unique within
    the batch: `scan`, `scan-2`; a folder of an earlier run is reused, its old outputs removed), and
    `out_dir/summary.csv` lists them all. A file that fails is reported (one line: file and reason
    in the returned failures) and the rest are done. Returns (results, failures); each result also
    holds "out_dir", its folder."""
    cfg = config or AnalysisConfig()
    cfg.check()
    model, _ = resolve_model(model)  # loaded once for the whole batch
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, failures, rows, taken = [], [], [], set()
    paths = [Path(p) for p in paths]
    for i, p in enumerate(paths):
        if progress:
            progress(i, len(paths), str(p))
        d = _unique_dir(out_dir, p.stem, taken)
        try:
            r = analyze_recording(p, model, d, cfg)
        except Exception as e:  # one bad file never stops the batch
            msg = str(e) if isinstance(e, PocovidError) else f"{p}: {type(e).__name__}: {e}"
            msg = " ".join(msg.split())
            failures.append(msg if str(p) in msg else f"{p}: {msg}")
            shutil.rmtree(d, ignore_errors=True)
            rows.append({"file": str(p), "folder": "", "status": "failed", "error": failures[-1]})
            continue
        r["out_dir"] = str(d)
        results.append(r)
        rows.append({"file": str(p), "folder": d.name, "status": "ok", "label": r["prediction"]["label"],
                     "probabilities": " ".join(f"{c}={v:.4f}" for c, v in r["prediction"]["probabilities"].items()),
                     "uncertainty": r["uncertainty"]["score"], "uncertainty_method": r["uncertainty"]["method"],
                     "review_recommended": r["review_recommended"], "out_of_distribution": r["out_of_distribution"],
                     "frames_disagree": r["prediction"]["frames_disagree"],
                     "n_frames": r["sampling"]["n_frames_analyzed"], "error": ""})
        for c, v in r["prediction"]["probabilities"].items():
            rows[-1][f"p_{c}"] = v
    write_summary(out_dir / "summary.csv", rows)
    if progress:
        progress(len(paths), len(paths), "")
    return results, failures


def write_summary(path: Path, rows: list[dict]) -> Path:
    pcols = sorted({k for r in rows for k in r if k.startswith("p_")})
    cols = SUMMARY_COLUMNS[:4] + pcols + SUMMARY_COLUMNS[5:]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    os.replace(tmp, path)
    return path
