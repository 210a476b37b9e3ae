"""A small demo dataset of phantom clips, in the public POCUS layout or in class folders.

`write_demo_dataset(root)` writes `n_patients_per_class` patients per class, each with
`clips_per_patient` short clips (and optionally still images), as real files that
`pocovid data index` reads like the real data:

* layout="public":  `pocus_videos/<probe>/Cov_demo_pat03_clip1.mp4`, `pocus_images/<probe>/...png`,
  plus `dataset_metadata.csv` with the public metadata's columns that matter (Filename, Label, Type,
  Probe, Source ID, Patient ID / Name, Lung Severity Score, License, findings, ...);
* layout="folders": `<class>/demo_pat03_clip1.mp4` (no prefix, no metadata; the file-name rule
  groups clips by patient), or `<class>/pat03/clip1.mp4` with `patient_folders=True`.

Patients are numbered across classes (pat01, pat02, ...), so a patient id is unique in the set.
Everything is deterministic for a seed; the default set (3 classes x 3 patients x 2 clips,
112 px, 10 frames) takes a second or two to write.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from pocovid.phantom.generator import PhantomConfig
from pocovid.phantom.writers import write_phantom

_PREFIX = {"covid": "Cov", "pneumonia": "Pneu", "regular": "Reg", "viral": "Vir"}
_META_LABEL = {"covid": "COVID-19", "pneumonia": "Bacterial pneumonia", "regular": "regular",
               "viral": "Viral pneumonia"}
# The phantom draws covid / pneumonia / regular; a viral demo clip shows B-lines like covid.
_PHANTOM_LABEL = {"covid": "covid", "pneumonia": "pneumonia", "regular": "regular", "viral": "covid"}
# Findings a reader would mark on each phantom class (the public metadata's 0/1 columns).
_FINDINGS = {
    "covid": {"B-lines": 1, "A-lines": 0, "Consolidations": 0, "Effusion": 0, "Pleural line irregularities": 1,
              "Air bronchogram": 0},
    "viral": {"B-lines": 1, "A-lines": 0, "Consolidations": 0, "Effusion": 0, "Pleural line irregularities": 1,
              "Air bronchogram": 0},
    "pneumonia": {"B-lines": 0, "A-lines": 0, "Consolidations": 1, "Effusion": 1, "Pleural line irregularities": 0,
                  "Air bronchogram": 1},
    "regular": {"B-lines": 0, "A-lines": 1, "Consolidations": 0, "Effusion": 0, "Pleural line irregularities": 0,
                "Air bronchogram": 0},
}
_SEVERITY = {"covid": 2, "viral": 2, "pneumonia": "", "regular": 0}

METADATA_COLUMNS = [
    "Current location", "Filename", "Label", "Lung Severity Score", "License", "Type", "Probe", "Source ID",
    "Framerate", "Resolution", "Length (frames)", "Patient ID / Name", "Effusion", "Consolidations", "B-lines",
    "A-lines", "Pleural line irregularities", "Air bronchogram",
]


def write_demo_dataset(
    root: str | os.PathLike,
    n_patients_per_class: int = 3,
    clips_per_patient: int = 2,
    layout: str = "public",
    seed: int = 0,
    classes: tuple[str, ...] | list[str] = ("covid", "pneumonia", "regular"),
    probes: tuple[str, ...] | list[str] = ("convex",),
    images_per_patient: int = 0,
    width: int = 112,
    height: int = 112,
    n_frames: int = 10,
    fps: float = 10.0,
    video_ext: str = ".mp4",
    image_ext: str = ".png",
    metadata: bool = True,
    patient_folders: bool = False,
    overlays: bool = False,
) -> Path:
    """Write a demo dataset under `root` (created) and return `root`.

    Patient `i` of the set uses probe `probes[i % len(probes)]`; with layout="public" and
    `metadata=True` a `dataset_metadata.csv` names each file's label, probe, source and patient.
    """
    _check_args(layout, classes, n_patients_per_class, clips_per_patient, images_per_patient)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    video_ext = video_ext if video_ext.startswith(".") else "." + video_ext
    image_ext = image_ext if image_ext.startswith(".") else "." + image_ext
    rows = []
    for cls, pid, probe in _patients(classes, n_patients_per_class, probes):
        for kind, count, ext in (("video", clips_per_patient, video_ext), ("image", images_per_patient, image_ext)):
            for j in range(1, count + 1):
                path, stem = _file_path(root, layout, patient_folders, cls, pid, probe, kind, j, ext)
                path.parent.mkdir(parents=True, exist_ok=True)
                nf = n_frames if kind == "video" else 1
                _write_clip(path, cls, probe, width, height, nf, fps, overlays, _clip_seed(seed, pid, kind, j))
                rows.append({
                    "Current location": path.parent.relative_to(root).as_posix(),
                    "Filename": stem, "Label": _META_LABEL[cls], "Lung Severity Score": _SEVERITY[cls],
                    "License": "CC0 1.0 (synthetic phantom)", "Type": kind, "Probe": probe,
                    "Source ID": 1, "Framerate": fps, "Resolution": f"{width}x{height}", "Length (frames)": nf,
                    "Patient ID / Name": pid, **_FINDINGS[cls],
                })
    if layout == "public" and metadata:
        _write_metadata(root / "dataset_metadata.csv", rows)
    return root


def _check_args(layout, classes, n_patients_per_class, clips_per_patient, images_per_patient) -> None:
    if layout not in ("public", "folders"):
        raise ValueError(f"layout must be 'public' or 'folders'; got {layout!r}")
    bad = [c for c in classes if c not in _PREFIX]
    if bad:
        raise ValueError(f"unknown class(es) {bad}; known: {', '.join(_PREFIX)}")
    if n_patients_per_class < 1 or clips_per_patient < 0 or images_per_patient < 0:
        raise ValueError("n_patients_per_class must be >= 1, clips/images per patient >= 0")


def _patients(classes, n_patients_per_class: int, probes):
    """(class, patient number, probe) for every patient; numbers run across classes (1, 2, ...)
    so a patient id is unique in the set, and probes take turns."""
    pid = 0
    for cls in classes:
        for _ in range(n_patients_per_class):
            pid += 1
            yield cls, pid, probes[(pid - 1) % len(probes)]


def _file_path(root: Path, layout: str, patient_folders: bool, cls: str, pid: int, probe: str, kind: str,
               j: int, ext: str) -> tuple[Path, str]:
    """Where file `j` of a patient goes in the layout, and its stem (the metadata's Filename)."""
    pat = f"pat{pid:02d}"
    word = "clip" if kind == "video" else "img"
    if layout == "public":  # the class is in the name's prefix, the probe in the folder
        folder = root / ("pocus_videos" if kind == "video" else "pocus_images") / probe
        stem = f"{_PREFIX[cls]}_demo_{pat}_{word}{j}"
    elif patient_folders:
        folder = root / cls / pat
        stem = f"{word}{j}"
    else:  # the file-name rule finds the patient in "demo_patNN_..."
        folder = root / cls
        stem = f"demo_{pat}_{word}{j}"
    return folder / f"{stem}{ext}", stem


def _clip_seed(seed: int, pid: int, kind: str, j: int) -> int:
    # The same patient seed for all of a patient's clips (same anatomy), a new one per clip.
    return seed * 100_003 + pid * 101 + j * 7 + (0 if kind == "video" else 50)


def _write_clip(path: Path, cls: str, probe: str, width: int, height: int, n_frames: int, fps: float,
                overlays: bool, seed: int) -> None:
    write_phantom(path, PhantomConfig(label=_PHANTOM_LABEL[cls], probe=probe, width=width, height=height,
                                      n_frames=n_frames, fps=fps, overlays=overlays, seed=seed))


def _write_metadata(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=METADATA_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(r)
