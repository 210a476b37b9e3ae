"""Which lung zone each recording of an exam shows, and which recordings make up the exam.

    files = exam_files(["scans/"], patient="10")             # a folder (or files) -> recordings, sorted
    zones = assign_zones(files)                               # from the names: patient_10_L1.mp4 -> L1
    zones = assign_zones(files, zones=["R1", "R2", "-"])      # given in file order ('-': unassigned)
    zones = assign_zones(files, zones_csv="zones.csv")        # a sidecar CSV with columns file,zone

The protocol is BLUE's six points (`BLUE_ZONES`: L1..L3 left lung, R1..R3 right lung; 1 upper
anterior, 2 lower anterior, 3 posterolateral, as COVID-BLUES names its files). A recording whose
zone is not known is *unassigned*: it is still analysed and counts toward the exam's diagnosis,
never toward the LUS score. Bad input raises `PocovidError` with one line.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pocovid.data.blues import VIDEO_DIR, ZONES, parse_video_name
from pocovid.errors import PocovidError
from pocovid.files import path_text
from pocovid.media import MEDIA_EXTENSIONS

#: The exam protocol: the six BLUE points, in the order the report lists them (patient's right first).
BLUE_ZONES = ("R1", "R2", "R3", "L1", "L2", "L3")
assert set(BLUE_ZONES) == set(ZONES)
#: What may stand for "no zone" in `--zones` and in a zones CSV.
UNASSIGNED_WORDS = ("", "-", "?", "none", "unassigned", "unknown")
SOURCES = ("name", "csv", "option")


@dataclass(frozen=True)
class ZoneOf:
    """One recording's zone (None: unassigned) and where it came from (`SOURCES`, None when unassigned)."""

    path: Path
    zone: str | None
    source: str | None = None
    patient: str | None = None  # the patient id the file name gives (patient_<ID>_...), if any


def normalize_zone(text: str, where: str = "zone") -> str | None:
    """'l1' -> 'L1'; an unassigned word -> None; anything else raises (one line, naming `where`)."""
    t = str(text).strip()
    if t.lower() in UNASSIGNED_WORDS:
        return None
    z = t.upper().replace(" ", "")
    if z not in BLUE_ZONES:
        raise PocovidError(f"{where}: unknown zone {t!r} (BLUE points: {', '.join(BLUE_ZONES)}; '-' for none)")
    return z


def zone_from_name(name: str | os.PathLike) -> tuple[str | None, str | None]:
    """(zone, patient id) from a file name: COVID-BLUES' `patient_<ID>_<POINT>[_2]`, else the one
    name part that is a BLUE point (`scan_L2.mp4`, `R3-second.mp4`); several different points in
    one name, or none: no zone."""
    stem = Path(name).stem
    pid, zone, _take = parse_video_name(stem)
    if zone:
        return zone, pid
    parts = {p.upper() for p in re.split(r"[^A-Za-z0-9]+", stem) if p}
    found = sorted(parts & set(BLUE_ZONES))
    return (found[0] if len(found) == 1 else None), pid


def _is_recording(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in MEDIA_EXTENSIONS


def exam_files(inputs, patient: str | None = None) -> list[Path]:
    """The recordings of one exam from files and folders: a folder gives its recordings (videos,
    images, DICOM with an extension; a COVID-BLUES root its `lus_videos`), sorted by name; files
    are kept as given. `patient`: keep only `patient_<ID>_...` names of that patient. Raises
    when nothing is left, or when the names belong to several patients (an exam is one patient's)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            sub = next((c for c in p.iterdir() if c.is_dir() and c.name.lower() == VIDEO_DIR), None)
            folder = sub if sub is not None and not any(_is_recording(c) for c in p.iterdir()) else p
            found = sorted((c for c in folder.iterdir() if _is_recording(c)), key=lambda c: c.name)
            if not found:
                raise PocovidError(f"{path_text(p)}: no recordings in this folder (videos, images, .dcm)")
            out += found
        elif p.exists() or p.is_symlink():
            out.append(p)
        else:
            raise PocovidError(f"{path_text(p)}: no such file or folder")
    if patient is not None:
        want = str(patient).strip()
        want = str(int(want)) if want.isdigit() else want
        out = [p for p in out if zone_from_name(p.name)[1] == want]
        if not out:
            raise PocovidError(f"no recording of patient {want} (names patient_{want}_<POINT>...) among the inputs")
    if not out:
        raise PocovidError("no recordings given")
    patients = sorted({pid for p in out if (pid := zone_from_name(p.name)[1]) is not None}, key=_num_first)
    if len(patients) > 1:
        raise PocovidError(f"the recordings belong to {len(patients)} patients ({', '.join(patients[:6])}"
                           f"{', ...' if len(patients) > 6 else ''}): an exam is one patient's; "
                           "pass that patient's files, or --patient ID")
    return out


def _num_first(s: str):
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def read_zones_csv(path: str | os.PathLike) -> dict[str, str | None]:
    """{file: zone} from a CSV with columns `file` and `zone` (header required; the file as its
    name or its path). Raises on a missing column, an unknown zone or a file given twice."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise PocovidError(f"{path_text(p)}: cannot read the zones CSV: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PocovidError(f"{path_text(p)}: cannot read the zones CSV ({type(e).__name__}: {e})") from None
    cols = {(c or "").strip().lower(): c for c in (rows[0].keys() if rows else [])}
    if not rows or "file" not in cols or "zone" not in cols:
        raise PocovidError(f"{path_text(p)}: a zones CSV needs a header with columns file,zone and one row per file")
    out: dict[str, str | None] = {}
    for i, r in enumerate(rows, 2):
        name = (r[cols["file"]] or "").strip()
        if not name:
            continue
        if name in out:
            raise PocovidError(f"{path_text(p)}: line {i}: {name!r} is given twice")
        out[name] = normalize_zone(r[cols["zone"]] or "", f"{path_text(p)}: line {i}")
    return out


def assign_zones(files, zones=None, zones_csv: str | os.PathLike | None = None) -> list[ZoneOf]:
    """Each file's zone: from `zones` (one per file, in order: a zone, or '-' / '' / None for
    unassigned) when given, else from the zones CSV (files it does not name fall back to their
    names), else from the file name. Raises when `zones` does not give one per file, or names an
    unknown zone."""
    files = [Path(f) for f in files]
    out = []
    if zones is not None:
        zones = [z.strip() for z in zones.split(",")] if isinstance(zones, str) else list(zones)
        if len(zones) != len(files):
            raise PocovidError(f"--zones gives {len(zones)} zone(s) for {len(files)} recording(s): give one per "
                               "recording, in order ('-' for none)")
        for f, z in zip(files, zones):
            zone = None if z is None else normalize_zone(z, f"--zones: {path_text(f.name)}")
            out.append(ZoneOf(f, zone, "option" if zone else None, zone_from_name(f.name)[1]))
        return out
    table = read_zones_csv(zones_csv) if zones_csv is not None else {}
    for f in files:
        named, pid = zone_from_name(f.name)
        key = next((k for k in (str(f), f.name, f.stem) if k in table), None)
        if key is not None:
            out.append(ZoneOf(f, table[key], "csv" if table[key] else None, pid))
        else:
            out.append(ZoneOf(f, named, "name" if named else None, pid))
    return out


def unmatched_csv_rows(files, zones_csv: str | os.PathLike | None) -> list[str]:
    """Names in the zones CSV that match none of the files (a typo would otherwise go unseen)."""
    if zones_csv is None:
        return []
    keys = {k for f in map(Path, files) for k in (str(f), f.name, f.stem)}
    return [k for k in read_zones_csv(zones_csv) if k not in keys]
