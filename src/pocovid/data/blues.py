"""COVID-BLUES in its own layout (github.com/NinaWie/COVID-BLUES; docs/data.md#covid-blues).

```
DIR/lus_videos/patient_<ID>_<POINT>[_2].mp4   one BLUE-protocol point (L1..L3, R1..R3) of a patient
DIR/clinical_variables.csv                    one row per patient_id: cov_test (PCR), clin_diagn#... (one-hot)
DIR/severity.csv                              one row per video_file (name without .mp4): Severity Score 0-3,
                                              A-lines yes/no, B-lines yes/no, comments
```

The label of every video is its **patient's** clinical diagnosis (`label_scope` = "patient"), not a
reading of the video. A video without a severity row is indexed with unknown findings; a video whose
patient has no clinical row cannot be labelled and is listed as a failure. A CSV that is missing or
cannot be parsed is one warning line, and the folder is indexed as far as it can be.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pocovid.data.findings import BLUES_FINDING_COLUMNS, BLUES_SEVERITY_COLUMN, Findings, parse_severity, parse_yes_no
from pocovid.data.index import (
    VERIFY_TIME_LIMIT_S,
    DatasetIndex,
    DatasetItem,
    _is_silent,
    _not_a_file,
    _walk,
    read_recording,
)
from pocovid.errors import PocovidError
from pocovid.files import path_text
from pocovid.media import MEDIA_EXTENSIONS

DATASET = "covid-blues"
VIDEO_DIR = "lus_videos"
CLINICAL_NAME = "clinical_variables.csv"
SEVERITY_NAME = "severity.csv"
LICENSE = "CC BY-NC-ND 4.0"
#: clinical_variables.csv one-hot diagnosis column -> class.
DIAGNOSES = {
    "clin_diagn#COVID19_pneumonia": "covid",
    "clin_diagn#bacterial_pneumonia": "pneumonia",
    "clin_diagn#healthy_lung": "regular",
    "clin_diagn#other_viral_pneumonia": "viral",
    "clin_diagn#other_lung_disease": "other",
}
ZONES = ("L1", "L2", "L3", "R1", "R2", "R3")
_NAME_RE = re.compile(r"^patient[_-]?(?P<id>\d+)(?:[_-](?P<zone>[A-Za-z]+\d+))?(?:[_-](?P<take>\d+))?$",
                      re.IGNORECASE)


@dataclass
class _Patient:
    label: str | None  # None: the diagnosis columns name no class, or several
    pcr: bool | None
    n_videos: int | None
    problem: str = ""  # why label is None


def is_blues_layout(root: Path) -> bool:
    """True when `root` holds a `lus_videos` folder (any letter case) or COVID-BLUES' two CSV files."""
    try:
        names = {p.name.lower(): p for p in root.iterdir()}
    except OSError:
        return False
    return (VIDEO_DIR in names and names[VIDEO_DIR].is_dir()) or {CLINICAL_NAME, SEVERITY_NAME} <= set(names)


def parse_video_name(stem: str) -> tuple[str | None, str, int]:
    """('46', 'L1', 1) from 'patient_46_L1'; take 2 for 'patient_46_L1_2'; zone '' when the name has no
    BLUE point; (None, '', 1) when it names no patient."""
    m = _NAME_RE.match(stem.strip())
    if not m:
        return None, "", 1
    zone = (m.group("zone") or "").upper()
    return str(int(m.group("id"))), zone if zone in ZONES else "", int(m.group("take") or 1)


def _find(root: Path, name: str) -> Path | None:
    for p in sorted(root.iterdir()):
        if p.name.lower() == name and p.is_file():
            return p
    return None


def _read_csv(path: Path, key: str, warnings: list[str]) -> list[dict] | None:
    """Rows of a CSV with column `key`; None (and one warning line) when it cannot be used."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if key not in header:
                warnings.append(f"{path.name}: not a COVID-BLUES table (no '{key}' column); ignored")
                return None
            reader.fieldnames = header
            rows = list(reader)
            if not rows:
                warnings.append(f"{path.name}: no rows")
            return rows
    except OSError as e:
        warnings.append(f"{path.name}: cannot read ({(e.strerror or type(e).__name__).lower()}); ignored")
    except (csv.Error, UnicodeDecodeError) as e:
        warnings.append(f"{path.name}: not a readable CSV file ({' '.join(str(e).split())[:120]}); ignored")
    return None


def read_clinical(path: Path, warnings: list[str]) -> dict[str, _Patient] | None:
    """Patients of clinical_variables.csv by id: label from the one-hot diagnosis, PCR from cov_test."""
    rows = _read_csv(path, "patient_id", warnings)
    if rows is None:
        return None
    missing = [c for c in DIAGNOSES if c not in rows[0]] if rows else []
    if missing:
        warnings.append(f"{path.name}: diagnosis column(s) {', '.join(missing)} missing")
    out: dict[str, _Patient] = {}
    for n, r in enumerate(rows, start=2):
        pid_text = (r.get("patient_id") or "").strip()
        try:
            pid = str(int(float(pid_text)))
        except ValueError:
            warnings.append(f"{path.name} row {n}: patient_id '{pid_text}' is not a number; row ignored")
            continue
        on = [lab for col, lab in DIAGNOSES.items() if parse_yes_no(r.get(col))[0]]
        pcr, ok = parse_yes_no(r.get("cov_test"))
        if not ok:
            warnings.append(f"{path.name} row {n} (patient {pid}): cov_test '{r.get('cov_test')}' is not 0/1; "
                            "PCR unknown")
        try:
            n_videos = int(float(r.get("number_video_files") or ""))
        except ValueError:
            n_videos = None
        p = _Patient(label=on[0] if len(on) == 1 else None, pcr=pcr, n_videos=n_videos)
        if not on:
            p.problem = "no clin_diagn# column is 1"
        elif len(on) > 1:
            p.problem = f"several diagnoses ({', '.join(on)})"
        if p.label is not None and pcr is not None and (p.label == "covid") != pcr:
            warnings.append(f"{path.name} row {n} (patient {pid}): diagnosis {p.label} but PCR "
                            f"{'positive' if pcr else 'negative'}")
        if pid in out:
            warnings.append(f"{path.name} row {n}: patient {pid} listed twice; the first row is used")
            continue
        out[pid] = p
    return out


def read_severity(path: Path, warnings: list[str]) -> dict[str, Findings] | None:
    """Findings of severity.csv by video_file (name without .mp4): severity, A-lines, B-lines."""
    rows = _read_csv(path, "video_file", warnings)
    if rows is None:
        return None
    out: dict[str, Findings] = {}
    for n, r in enumerate(rows, start=2):
        name = re.sub(r"\.mp4$", "", (r.get("video_file") or "").strip(), flags=re.IGNORECASE)
        if not name:
            continue
        sev, ok = parse_severity(r.get(BLUES_SEVERITY_COLUMN))
        if not ok:
            warnings.append(f"{path.name} row {n} ({name}): '{BLUES_SEVERITY_COLUMN}' is "
                            f"'{r.get(BLUES_SEVERITY_COLUMN)}', not 0-3; left unknown")
        found = {}
        for key, col in BLUES_FINDING_COLUMNS.items():
            v, ok = parse_yes_no(r.get(col))
            if not ok:
                warnings.append(f"{path.name} row {n} ({name}): '{col}' is '{r.get(col)}', not yes/no; left unknown")
            found[key] = v
        if name.lower() in out:
            warnings.append(f"{path.name} row {n}: video_file '{name}' listed twice; the first row is used")
            continue
        out[name.lower()] = Findings(**found, severity=sev)
    return out


def index_blues(root: Path, probes=None, classes=None, verify: bool = False,
                verify_time_limit_s: float = VERIFY_TIME_LIMIT_S) -> DatasetIndex:
    """Index a COVID-BLUES folder (`index_dataset` calls this when it sees the layout): every video
    with patient `pat<ID>`, zone, label (the patient's clinical diagnosis), PCR, severity and findings.
    Probe: convex (the study's Philips Lumify convex probe)."""
    warnings: list[str] = []
    clinical_path, severity_path = _find(root, CLINICAL_NAME), _find(root, SEVERITY_NAME)
    clinical = read_clinical(clinical_path, warnings) if clinical_path else None
    severity = read_severity(severity_path, warnings) if severity_path else None
    if clinical_path is None:
        warnings.append(f"{CLINICAL_NAME}: missing; no video can be labelled")
    if severity_path is None:
        warnings.append(f"{SEVERITY_NAME}: missing; severity, A-lines and B-lines unknown")
    idx = DatasetIndex(root=root, probes=probes, classes=classes, verified=bool(verify), layout="COVID-BLUES",
                       dataset=DATASET, metadata=", ".join(p.name for p in (clinical_path, severity_path) if p))
    unreadable: list[tuple[str, str]] = []
    n_media = 0
    seen_videos: set[str] = set()
    per_patient: Counter = Counter()
    for path in _walk(root, unreadable):
        rel_s = path.relative_to(root).as_posix()
        ext = path.suffix.lower()
        if ext not in MEDIA_EXTENSIONS:
            if not _is_silent(path.name):
                idx.skipped.append((rel_s, f"unsupported file type '{ext}'" if ext else "no file extension"))
            continue
        n_media += 1
        not_file = _not_a_file(path)
        if not_file is not None:
            idx.failures.append((rel_s, not_file))
            continue
        pid, zone, _take = parse_video_name(path.stem)
        if pid is None:
            idx.failures.append((rel_s, "no label: the name is not patient_<ID>_<POINT>[_2] (COVID-BLUES layout)"))
            continue
        seen_videos.add(path.stem.lower())
        per_patient[pid] += 1
        patient = (clinical or {}).get(pid)
        if patient is None or patient.label is None:
            why = (f"{CLINICAL_NAME} is missing or unreadable" if clinical is None
                   else f"patient {pid} has no row in {CLINICAL_NAME}" if patient is None
                   else f"patient {pid}: {patient.problem} in {CLINICAL_NAME}")
            idx.failures.append((rel_s, f"no label: {why}"))
            continue
        if not zone:
            warnings.append(f"{rel_s}: no BLUE point (L1..L3, R1..R3) in the name; zone unknown")
        if (probes is not None and "convex" not in probes) or (classes is not None and patient.label not in classes):
            continue
        findings = (severity or {}).get(path.stem.lower())
        if findings is None and severity is not None:
            warnings.append(f"{rel_s}: no row in {SEVERITY_NAME}; severity, A-lines and B-lines unknown")
        info, problem = read_recording(path, verify, verify_time_limit_s)
        if problem is not None:
            idx.failures.append((rel_s, problem))
            continue
        idx.items.append(DatasetItem(
            path=rel_s, kind=info.kind, probe="convex", label=patient.label, patient=f"pat{pid}",
            fps=round(float(info.fps), 3) if info.fps else None, n_frames=int(info.n_frames),
            width=int(info.width), height=int(info.height), format=info.format,
            findings=findings or Findings(), license=LICENSE, label_from="clinical", group_from="filename",
            dataset=DATASET, zone=zone, exam=f"pat{pid}", pcr=patient.pcr, label_scope="patient"))
    idx.failures[:0] = unreadable
    if n_media == 0:
        raise PocovidError(f"{path_text(root)}: no recordings found (COVID-BLUES layout: no video in {VIDEO_DIR}/)")
    if severity:
        unmatched = sorted(set(severity) - seen_videos)
        if unmatched:
            warnings.append(f"{SEVERITY_NAME}: {len(unmatched)} row(s) name no video in the folder: "
                            + ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else ""))
    for pid, p in sorted((clinical or {}).items(), key=lambda kv: int(kv[0])):
        if p.n_videos is not None and per_patient[pid] and p.n_videos != per_patient[pid]:
            warnings.append(f"{CLINICAL_NAME}: patient {pid}: number_video_files says {p.n_videos}, "
                            f"the folder holds {per_patient[pid]}")
    idx.warnings = warnings
    return idx
