"""A small phantom dataset in COVID-BLUES' layout (tests; docs/data.md#covid-blues).

    write_blues_dataset(root)  ->  root/lus_videos/patient_<ID>_<POINT>[_2].mp4, clinical_variables.csv,
                                   severity.csv

Each patient gets a clinical diagnosis (one-hot `clin_diagn#...` columns, `cov_test` PCR) and videos at
some of the six BLUE points; severity.csv gives each video a Severity Score 0-3 and A-/B-lines yes/no,
written as the real file writes them ('0.0', 'yes', sometimes 'yes ' with a trailing space).
Deterministic: the same arguments write the same files.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from pocovid.phantom.generator import PhantomConfig
from pocovid.phantom.writers import write_phantom

#: clin_diagn# column of each class, as clinical_variables.csv names them.
DIAGNOSIS_COLUMN = {
    "covid": "clin_diagn#COVID19_pneumonia",
    "pneumonia": "clin_diagn#bacterial_pneumonia",
    "regular": "clin_diagn#healthy_lung",
    "viral": "clin_diagn#other_viral_pneumonia",
    "other": "clin_diagn#other_lung_disease",
}
ZONES = ("L1", "L2", "L3", "R1", "R2", "R3")
# What the phantom draws for each diagnosis (it knows covid / pneumonia / regular).
_DRAWN = {"covid": "covid", "pneumonia": "pneumonia", "regular": "regular", "viral": "covid", "other": "pneumonia"}
CLINICAL_COLUMNS = ["patient_id", "cov_test", "number_video_files", "pat_age", *DIAGNOSIS_COLUMN.values(),
                    "CRP"]


def write_blues_dataset(root: str | os.PathLike, classes=("covid", "covid", "regular", "pneumonia", "other"),
                        zones: tuple[str, ...] = ("L1", "R1", "R2"), first_id: int = 1, repeats: int = 1,
                        width: int = 64, height: int = 64, n_frames: int = 4, fps: float = 25.0,
                        seed: int = 0) -> Path:
    """Write one patient per entry of `classes` (ids `first_id`, `first_id + 1`, ...), each with a video
    at every point of `zones`; the first `repeats` patients also get a second recording of their first
    point (`patient_<ID>_<POINT>_2.mp4`). Returns `root`."""
    bad = [c for c in classes if c not in DIAGNOSIS_COLUMN]
    if bad or not classes:
        raise ValueError(f"unknown or no class(es) {bad}; known: {', '.join(DIAGNOSIS_COLUMN)}")
    bad_z = [z for z in zones if z not in ZONES]
    if bad_z or not zones:
        raise ValueError(f"unknown or no BLUE point(s) {bad_z}; known: {', '.join(ZONES)}")
    root = Path(root)
    videos = root / "lus_videos"
    videos.mkdir(parents=True, exist_ok=True)
    clinical, severity = [], []
    for i, cls in enumerate(classes):
        pid = first_id + i
        stems = [f"patient_{pid}_{z}" for z in zones] + ([f"patient_{pid}_{zones[0]}_2"] if i < repeats else [])
        for j, stem in enumerate(stems):
            write_phantom(videos / f"{stem}.mp4", PhantomConfig(
                label=_DRAWN[cls], probe="convex", width=width, height=height, n_frames=n_frames, fps=fps,
                overlays=False, seed=seed * 100_003 + pid * 101 + j * 7))
            score = (pid + j) % 4 if cls in ("covid", "viral", "other", "pneumonia") else 0
            b = score > 0 or cls in ("covid", "viral")
            severity.append({"video_file": stem, "Severity Score": f"{float(score)}", "A-lines": "no" if b else "yes",
                             "B-lines": ("yes " if j == 1 else "yes") if b else "no",
                             "comments": "B-lines, thickened pleura" if b else "A-lines, normal pleura"})
        row = {"patient_id": pid, "cov_test": int(cls == "covid"), "number_video_files": f"{float(len(stems))}",
               "pat_age": 40.0 + pid, "CRP": ""}
        row.update({col: int(c == cls) for c, col in DIAGNOSIS_COLUMN.items()})
        clinical.append(row)
    _write_csv(root / "clinical_variables.csv", CLINICAL_COLUMNS, clinical)
    _write_csv(root / "severity.csv", ["video_file", "Severity Score", "A-lines", "B-lines", "comments"], severity)
    return root


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
