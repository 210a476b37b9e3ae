"""Index a lung-ultrasound dataset folder: one row per readable recording, with label, probe,
patient group and the recording's facts; unreadable and unknown files listed with a reason.

Two layouts are read, folder names in any letter case (docs/data.md):

* the public POCUS dataset's: `pocus_videos/{convex,linear}/`, `pocus_images/{convex,linear}/`,
  optional `dataset_metadata.csv` at the root, class given by the file-name prefix (`Cov`, `Pneu`,
  `Reg`, `Vir`) and by the metadata's `Label` column;
* COVID-BLUES' (`lus_videos/patient_<ID>_<POINT>[_2].mp4`, `clinical_variables.csv`, `severity.csv`):
  read by `pocovid.data.blues`, label = the patient's clinical diagnosis;
* plain class folders: `DIR/<class>/<files>` (`covid`, `pneumonia`, `regular`, `viral` or common
  synonyms such as `healthy`, `normal`, `bacterial`); a folder inside a class folder is a patient
  (`DIR/covid/patient07/clip1.mp4`); `convex`/`linear` folders anywhere on the path set the probe.

Paths in the index are relative to its root, with '/' separators (`DatasetIndex.abspath` resolves
them).
"""

from __future__ import annotations

import csv
import io
import os
import re
import stat
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from pocovid.data.findings import (
    FINDING_NAMES,
    POCUS_FINDING_COLUMNS,
    POCUS_SEVERITY_COLUMN,
    TARGETS,
    Findings,
    parse_severity,
    parse_yes_no,
)
from pocovid.data.labels import (
    CLASSES,
    PROBES,
    is_uncertain_label,
    label_from_filename,
    normalize_label,
    parse_classes,
    parse_probes,
    patient_from_filename,
    probe_from_name,
)
from pocovid.errors import PocovidError
from pocovid.files import path_from_text, path_text, write_text
from pocovid.media import MEDIA_EXTENSIONS, MediaError, open_media, probe
from pocovid.media.reader import looks_like_dicom

METADATA_NAME = "dataset_metadata.csv"

#: Findings columns: index name -> the public metadata's column (`pocovid.data.findings`).
FINDINGS = POCUS_FINDING_COLUMNS
#: Names of the datasets whose layout the index recognises; other folders are named after themselves.
POCUS_DATASET = "pocus"

# Files that are part of a dataset folder but are not recordings: never listed.
_SILENT_EXTENSIONS = {
    ".md", ".txt", ".csv", ".tsv", ".json", ".yaml", ".yml", ".xlsx", ".xls", ".ods", ".pdf", ".doc",
    ".docx", ".html", ".htm", ".rst", ".py", ".ipynb", ".log", ".ini", ".cfg", ".toml", ".xml", ".sh",
    ".db", ".sqlite", ".lock", ".gitignore", ".gitattributes", ".gitkeep", ".keep",
}
_SILENT_NAMES = {"thumbs.db", "desktop.ini", "license", "licence", "readme", "notice", "copying",
                 "changelog", "authors", "makefile"}
_SKIP_DIRS = {"__macosx", "__pycache__", "node_modules"}
_CONTAINER_DIRS = {"pocus_videos", "pocus_images", "videos", "images", "data", "dataset", "clips", "frames"}
_RES_RE = re.compile(r"^\s*\d+\s*[xX×]\s*\d+\s*$")

#: A DICOM file's header (everything before the pixel data) must end within its first bytes: a
#: file whose pixel data is not found there is a failure, and nothing further is read (a file of
#: 'DICM' and zeros would otherwise be parsed to its end, gigabytes of empty elements).
DICOM_HEADER_LIMIT = 4 << 20
#: `verify=True`: the most time spent decoding one file (first to middle frame), in seconds.
VERIFY_TIME_LIMIT_S = 30.0
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # PixelData, FloatPixelData, DoubleFloatPixelData


@dataclass
class DatasetItem:
    """One indexed recording. `path` is relative to its dataset's root, '/'-separated."""

    path: str
    kind: str  # "video" | "image"
    probe: str  # "convex" | "linear" | "unknown"
    label: str  # "covid" | "pneumonia" | "regular" | "viral"
    label_uncertain: bool = False  # `Vir_or_Pneu`: viral or bacterial, unknown which
    patient: str = ""  # group id: src<S>-pat<P> (metadata), dir-<folder>, file-<key> (file-name rule)
    fps: float | None = None
    n_frames: int = 0
    width: int = 0
    height: int = 0
    format: str = ""
    source: str = ""  # metadata `Source ID`
    findings: Findings = field(default_factory=Findings)  # b_lines ... severity; None = unknown
    license: str = ""
    label_from: str = ""  # "metadata" | "folder" | "filename" | "clinical" (a patient's diagnosis)
    group_from: str = ""  # "metadata" | "folder" | "filename"
    dataset: str = ""  # "pocus", "covid-blues", or the folder's name; "" in hand-made indexes
    zone: str = ""  # BLUE-protocol point L1..L3, R1..R3 where the dataset says; "" unknown
    exam: str = ""  # the recordings of one patient at one visit (both datasets: the patient)
    pcr: bool | None = None  # the patient's COVID-19 PCR result where the dataset gives it
    label_scope: str = "recording"  # "patient": the label is the patient's diagnosis, not this recording's

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def severity(self) -> int | None:
        return self.findings.severity


@dataclass
class DatasetIndex:
    root: Path
    items: list[DatasetItem] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): recordings not indexed
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not recordings
    warnings: list[str] = field(default_factory=list)
    layout: str = ""
    metadata: str | None = None  # metadata file used, relative to root
    probes: list[str] | None = None  # filters applied (None: all)
    classes: list[str] | None = None
    verified: bool = False  # True: every indexed file's first and middle frame decoded (`verify=True`)
    dataset: str = ""  # the dataset's name (one root); "" for several (see `roots`)
    roots: dict[str, Path] = field(default_factory=dict)  # dataset -> its root, when several are combined

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def abspath(self, item: DatasetItem | str) -> Path:
        if isinstance(item, DatasetItem):
            return Path(self.roots.get(item.dataset, self.root)) / item.path
        return Path(self.root) / item

    def datasets(self) -> list[str]:
        """The datasets of the items, in the order they were combined."""
        return list(dict.fromkeys(it.dataset for it in self.items))

    def target_counts(self) -> dict[str, Counter]:
        """Per dataset: how many recordings carry each target (finding or severity) known."""
        out: dict[str, Counter] = {}
        for it in self.items:
            c = out.setdefault(it.dataset, Counter({t: 0 for t in TARGETS}))
            c.update(it.findings.known())
        return out

    def exams(self) -> list[dict]:
        """One row per exam (a patient's recordings of one visit): dataset, exam, patient, label at the
        patient's level (`exam_label`), number of recordings and zones."""
        groups: dict[tuple[str, str], list[DatasetItem]] = {}
        for it in self.items:
            groups.setdefault((it.dataset, it.exam or it.patient), []).append(it)
        return [{"dataset": ds, "exam": ex, "patient": its[0].patient, "label": exam_label(its),
                 "label_scope": its[0].label_scope, "n_recordings": len(its),
                 "zones": sorted({it.zone for it in its if it.zone})}
                for (ds, ex), its in sorted(groups.items())]

    def counts(self) -> Counter:
        """Counter keyed by (label, probe, kind)."""
        return Counter((it.label, it.probe, it.kind) for it in self.items)

    def patients(self) -> list[str]:
        return sorted({it.patient for it in self.items})

    def filter(self, probes=None, classes=None) -> "DatasetIndex":
        """A new index keeping the given probes / classes (lists or comma strings)."""
        probes, classes = parse_probes(probes), parse_classes(classes)
        keep = [it for it in self.items
                if (probes is None or it.probe in probes) and (classes is None or it.label in classes)]
        return DatasetIndex(Path(self.root), keep, list(self.failures), list(self.skipped),
                            list(self.warnings), self.layout, self.metadata,
                            probes if probes is not None else self.probes,
                            classes if classes is not None else self.classes, self.verified,
                            self.dataset, dict(self.roots))

    def _targets_table(self) -> str:
        """Per dataset: recordings, patients, exams, and how many recordings carry each target."""
        tc = self.target_counts()
        head = ["dataset", "recordings", "patients", *TARGETS]
        rows = []
        for ds, c in tc.items():
            its = [it for it in self.items if it.dataset == ds]
            rows.append([ds or "-", str(len(its)), str(len({it.patient for it in its})), *(str(c[t]) for t in TARGETS)])
        ws = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        lines = ["targets known (recordings with the finding marked yes/no, or a severity 0-3):",
                 "  " + "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, ws)))]
        lines += ["  " + "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, ws)))
                  for r in rows]
        for ds in tc:
            its = [it for it in self.items if it.dataset == ds]
            if any(it.label_scope == "patient" for it in its):
                zones = Counter(it.zone or "?" for it in its)
                lines.append(f"{ds}: the label is the PATIENT's clinical diagnosis, not each recording's "
                             f"(a COVID-19 patient's points may be normal); zones "
                             + ", ".join(f"{z} {n}" for z, n in sorted(zones.items()))
                             + f"; PCR positive {sum(it.pcr is True for it in its)}, negative "
                             f"{sum(it.pcr is False for it in its)}, unknown {sum(it.pcr is None for it in its)}"
                             " (recordings)")
        return "\n".join(lines) + "\n"

    def summary(self, max_lines: int = 50) -> str:
        """The table the CLI prints: counts per class x probe x kind, then failures and warnings."""
        out = io.StringIO()
        meta = f", metadata: {self.metadata}" if self.metadata else ", no metadata"
        filt = []
        if self.probes:
            filt.append("probe " + ",".join(self.probes))
        if self.classes:
            filt.append("classes " + ",".join(self.classes))
        if self.roots:
            out.write("datasets: " + "; ".join(f"{ds} = {path_text(r)}" for ds, r in self.roots.items())
                      + (f"; filter: {'; '.join(filt)}" if filt else "") + "\n")
        else:
            name = f"{self.dataset}, " if self.dataset else ""
            out.write(f"dataset: {path_text(self.root)} ({name}{self.layout} layout{meta})"
                      + (f"; filter: {'; '.join(filt)}" if filt else "") + "\n")
        if self.layout != "index CSV":
            out.write("check: verified by decoding (first and middle frame of every file)\n" if self.verified
                      else "check: headers only (frames not decoded; --verify decodes them)\n")
        c = self.counts()
        cols = [(p, k) for p in PROBES for k in ("video", "image") if any(key[1:] == (p, k) for key in c)]
        labels = [lab for lab in CLASSES if any(key[0] == lab for key in c)]
        if self.items:
            w0 = max(9, *(len(x) for x in labels))
            head = [f"{p} {k}" for p, k in cols] + ["total"]
            ws = [max(len(h), 5) for h in head]
            out.write("class".ljust(w0) + "  " + "  ".join(h.rjust(w) for h, w in zip(head, ws)) + "\n")
            for lab in labels:
                vals = [c[(lab, p, k)] for p, k in cols]
                vals.append(sum(vals))
                out.write(lab.ljust(w0) + "  " + "  ".join(str(v).rjust(w) for v, w in zip(vals, ws)) + "\n")
            tot = [sum(c[(lab, p, k)] for lab in labels) for p, k in cols]
            tot.append(sum(tot))
            out.write("total".ljust(w0) + "  " + "  ".join(str(v).rjust(w) for v, w in zip(tot, ws)) + "\n")
            unc = sum(it.label_uncertain for it in self.items)
            src = Counter(it.group_from for it in self.items)
            out.write(f"recordings: {len(self.items)}; patients: {len(self.patients())} (groups from "
                      + ", ".join(f"{k} {v}" for k, v in sorted(src.items())) + ")"
                      + (f"; uncertain labels: {unc}" if unc else "") + "\n")
            out.write(self._targets_table())
        else:
            out.write("no recordings indexed\n")
        for title, rows in (("failures (not indexed)", self.failures), ("skipped (not recordings)", self.skipped)):
            if rows:
                out.write(f"{title}: {len(rows)}\n")
                for p, r in rows[:max_lines]:
                    out.write(f"  {path_text(p)}: {path_text(r)}\n")
                if len(rows) > max_lines:
                    out.write(f"  ... and {len(rows) - max_lines} more\n")
        if self.warnings:
            out.write(f"warnings: {len(self.warnings)}\n")
            for w in self.warnings[:max_lines]:
                out.write(f"  {path_text(w)}\n")
            if len(self.warnings) > max_lines:
                out.write(f"  ... and {len(self.warnings) - max_lines} more\n")
        return out.getvalue().rstrip("\n")


# --------------------------------------------------------------------------------------- metadata


def _col(header: list[str], *names: str) -> str | None:
    """The header's column for a name, matched without case and extra spaces."""
    norm = {" ".join(h.strip().lower().split()): h for h in header}
    for n in names:
        h = norm.get(" ".join(n.lower().split()))
        if h is not None:
            return h
    return None


def _num_id(v: str | None) -> str:
    """'36.0' -> '36', ' 7 ' -> '7', 'Anna B' -> 'Anna-B'; '' for empty / n/a."""
    v = (v or "").strip()
    if not v or v.lower() in ("nan", "n/a", "na", "none", "-", "?"):
        return ""
    try:
        f = float(v)
        if f.is_integer():
            return str(int(f))
    except ValueError:
        pass
    return re.sub(r"[^\w.]+", "-", v).strip("-")


@dataclass
class _MetaRow:
    filename: str
    label_text: str = ""
    probe: str | None = None
    type: str = ""
    source: str = ""
    patient: str = ""
    license: str = ""
    findings: Findings = field(default_factory=Findings)


def read_metadata(path: Path, warnings: list[str]) -> dict[str, _MetaRow]:
    """Rows of a `dataset_metadata.csv` keyed by `Filename` (file name without extension)."""
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = list(reader)
    except OSError as e:
        raise PocovidError(f"{path}: cannot read metadata ({e.strerror or e})") from None
    except csv.Error as e:
        raise PocovidError(f"{path}: not a readable CSV file ({e})") from None
    if not header:
        warnings.append(f"{path.name}: empty metadata file, ignored")
        return {}
    c_file = _col(header, "Filename", "File name", "file")
    if c_file is None:
        warnings.append(f"{path.name}: no 'Filename' column, metadata ignored")
        return {}
    pos = {h: i for i, h in enumerate(header)}
    c = {k: _col(header, *names) for k, names in {
        "label": ("Label",), "probe": ("Probe",), "type": ("Type",), "source": ("Source ID", "Source"),
        "patient": ("Patient ID / Name", "Patient ID", "Patient"), "severity": (POCUS_SEVERITY_COLUMN,),
        "license": ("License",), "resolution": ("Resolution",), "length": ("Length (frames)",),
    }.items()}
    c_find = {k: _col(header, v) for k, v in FINDINGS.items()}
    out: dict[str, _MetaRow] = {}
    for line_no, values in enumerate(rows, start=2):
        if not any(v.strip() for v in values):
            continue
        values = values + [""] * (len(header) - len(values))
        get = lambda col, values=values: values[pos[col]].strip() if col is not None else ""
        name = get(c_file)
        if not name:
            continue
        name = re.sub(r"\.[A-Za-z0-9]{2,5}$", "", name) if Path(name).suffix.lower() in MEDIA_EXTENSIONS else name
        row = _MetaRow(filename=name, label_text=get(c["label"]), type=get(c["type"]).lower(),
                       source=_num_id(get(c["source"])), patient=_num_id(get(c["patient"])),
                       license=get(c["license"]))
        pr = get(c["probe"])
        row.probe = probe_from_name(pr) if pr else None
        severity, ok = parse_severity(get(c["severity"]))
        if not ok:
            warnings.append(f"{path.name} row {line_no} ({name}): '{POCUS_SEVERITY_COLUMN}' is "
                            f"'{_clip(get(c['severity']))}', not 0-3; left unknown")
        shifted = (c["resolution"] is not None and c["length"] is not None and c["patient"] is not None
                   and not _RES_RE.match(get(c["resolution"]) or "x") and _RES_RE.match(get(c["length"])))
        if shifted:
            # The row's columns Framerate .. Patient ID are shifted one to the right (the public
            # metadata has such rows): the patient id is in the next column.
            nxt = pos[c["patient"]] + 1
            real = _num_id(values[nxt]) if nxt < len(values) else ""
            warnings.append(f"{path.name} row {line_no} ({name}): columns Framerate..Patient ID are shifted one "
                            f"to the right (Resolution '{get(c['resolution'])}', Length '{get(c['length'])}'); "
                            f"patient read from the next column: {real or '?'} (not {row.patient or '?'}); "
                            "findings of this row ignored")
            row.patient = real
        found: dict[str, bool | None] = {}
        for k, col in c_find.items():
            v, ok = parse_yes_no(get(col))
            if shifted:
                v = None
            elif not ok:
                warnings.append(f"{path.name} row {line_no} ({name}): '{FINDINGS[k]}' is "
                                f"'{_clip(get(col))}', not 0/1; left unknown")
            found[k] = v
        row.findings = Findings(**found, severity=severity)
        if name in out:
            warnings.append(f"{path.name} row {line_no}: Filename '{name}' listed twice; the first row is used")
            continue
        out[name] = row
    return out


def _clip(s: str, n: int = 40) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


# ------------------------------------------------------------------------------------------ walking


def _is_silent(name: str) -> bool:
    low = name.lower()
    if low.startswith(".") or low.startswith("~$"):
        return True
    stem, ext = os.path.splitext(low)
    return ext in _SILENT_EXTENSIONS or low in _SILENT_NAMES or stem in _SILENT_NAMES


def _walk(root: Path, unreadable: list[tuple[str, str]]):
    """Every file under `root` (sorted, hidden and system folders left out); folders that cannot
    be listed are added to `unreadable` as (path relative to root + '/', reason)."""
    def on_error(e: OSError) -> None:
        folder = Path(e.filename) if e.filename else root
        try:
            rel = folder.relative_to(root).as_posix()
        except ValueError:
            rel = str(folder)
        unreadable.append((rel + "/", f"cannot read folder ({_os_reason(e)}); its files are not indexed"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in _SKIP_DIRS)
        for fn in sorted(filenames):
            yield Path(dirpath) / fn


def _os_reason(e: OSError) -> str:
    return (e.strerror or type(e).__name__).lower()


def _not_a_file(path: Path) -> str | None:
    """Why `path` is not a regular file (a FIFO would block the reader forever), else None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken link (its target does not exist)" if os.path.islink(path) else "no such file"
    except OSError as e:
        return f"cannot read ({_os_reason(e)})"
    if stat.S_ISREG(mode):
        return None
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
    return f"not a regular file ({kind})"


def _dicom_header_problem(path: Path) -> str | None:
    """Why a DICOM file larger than `DICOM_HEADER_LIMIT` cannot be indexed: its header does not
    end (no pixel data found) within that many bytes. Only those bytes are read and parsed, so a
    file of 'DICM' and zeros cannot keep the index busy. None for smaller files (the reader judges
    them, reading at most the same number of bytes) and for headers that end in time."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with open(path, "rb") as f:
            head = f.read(DICOM_HEADER_LIMIT + 1)
    except OSError:
        return None  # the reader says why (permission denied, ...)
    if len(head) <= DICOM_HEADER_LIMIT:
        return None
    head = head[:DICOM_HEADER_LIMIT]
    fp = io.BytesIO(head)
    try:
        pydicom.dcmread(fp, stop_before_pixels=True, defer_size=1024)
    except InvalidDicomError:
        return "not a DICOM file"
    except Exception as e:
        return f"not a readable DICOM file ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
    pos = fp.tell()
    at = int.from_bytes(head[pos:pos + 2], "little") << 16 | int.from_bytes(head[pos + 2:pos + 4], "little")
    at_be = int.from_bytes(head[pos:pos + 4], "big")
    if pos < len(head) and (at in _PIXEL_TAGS or at_be in _PIXEL_TAGS):
        return None
    return (f"DICOM header does not end within the first {DICOM_HEADER_LIMIT >> 20} MiB (no pixel data "
            "found there; the rest is not read): a damaged or padded file")


def _decode_problem(path: Path, n_frames: int, time_limit_s: float) -> str | None:
    """Why the frames of a recording whose header reads do not decode: its first and middle frame
    are decoded (at most `time_limit_s` seconds). None when both decode."""
    mid = max(n_frames - 1, 0) // 2
    t0 = time.monotonic()
    last = -1
    try:
        with open_media(path) as r:
            for fr in r.frames(None):
                if fr.image.size == 0:
                    return f"frame {fr.index} decodes to an empty image"
                last = fr.index
                if last >= mid:
                    return None
                if time.monotonic() - t0 > time_limit_s:
                    return (f"decoding too slow: {last + 1} of {n_frames} frames in {time_limit_s:g} s "
                            f"(the middle frame, {mid}, not reached)")
    except MediaError as e:
        return f"frames do not decode: {e.reason}"
    except Exception as e:  # a decoder bug: report it like a bad file
        return f"frames do not decode ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
    if last < 0:
        return f"no frame decodes (the header says {n_frames} frame(s))"
    return f"only {last + 1} of {n_frames} frames decode (the header's count; the middle frame, {mid}, does not)"


@dataclass
class _PathFacts:
    probe: str | None = None
    folder_label: str | None = None
    folder_uncertain: bool = False
    patient_dir: str | None = None


def _path_facts(rel_dirs: tuple[str, ...]) -> _PathFacts:
    """Probe, class and patient folder from the folders between the root and a file."""
    f = _PathFacts()
    recognised = False
    for d in rel_dirs:
        pr = probe_from_name(d)
        if pr:
            f.probe = pr
            recognised = True
            continue
        if is_uncertain_label(d):
            f.folder_label, f.folder_uncertain = normalize_label(d), True
            recognised = True
            continue
        lab = normalize_label(d)
        if lab:
            f.folder_label = lab
            recognised = True
            continue
        if d.lower() in _CONTAINER_DIRS:
            recognised = True
            continue
        if recognised and f.patient_dir is None and (f.folder_label or f.probe):
            f.patient_dir = d
    return f


def _find_metadata(root: Path) -> Path | None:
    """`dataset_metadata.csv` in `root`, or above it when `root` is inside a public layout's
    `pocus_videos` / `pocus_images` folder (indexing `pocus_videos/convex` alone still finds it)."""
    parts = [d.lower() for d in root.parts]
    searched = [root]
    for depth in (1, 2):
        if len(parts) > depth and parts[-depth] in ("pocus_videos", "pocus_images"):
            searched.append(root.parents[depth - 1])
    for folder in searched:
        try:
            names = sorted(folder.iterdir())
        except OSError:  # an unreadable root is reported by the walk; a parent is optional
            continue
        for p in names:
            if p.name.lower() == METADATA_NAME and p.is_file():
                return p
    return None


def _readable_root(root_in: Path) -> Path:
    """`root_in` resolved, or PocovidError when it is not a folder that can be listed."""
    if not root_in.exists():
        raise PocovidError(f"{path_text(root_in)}: no such folder")
    if not root_in.is_dir():
        raise PocovidError(f"{path_text(root_in)}: not a folder")
    root = root_in.resolve()
    try:
        with os.scandir(root):
            pass
    except OSError as e:
        raise PocovidError(f"{path_text(root_in)}: cannot read folder ({_os_reason(e)})") from None
    return root


def _file_kind(path: Path) -> tuple[str, str | None]:
    """What the walk does with a file: ("media", None) to index it, ("ignore", None) for documents,
    ("skip", reason) for other types, ("fail", reason) for a media name that is not a regular file."""
    name, ext = path.name, path.suffix.lower()
    if ext not in MEDIA_EXTENSIONS and _is_silent(name):
        return "ignore", None
    not_file = _not_a_file(path)
    if not_file is not None:
        return ("fail" if ext in MEDIA_EXTENSIONS else "skip"), not_file
    if ext in MEDIA_EXTENSIONS or (ext == "" and looks_like_dicom(path)):  # scanners write DICOM without one
        return "media", None
    if ext == "":
        return "skip", "no file extension and not a DICOM file"
    return "skip", f"unsupported file type '{ext}'"


def _choose_label(rel_s: str, name: str, row: _MetaRow | None, facts, warnings: list[str]
                  ) -> tuple[str, bool, str] | None:
    """(label, uncertain, where from) of a file: metadata, else class folder, else file-name prefix;
    disagreements are warned about. None when none of them gives one."""
    name_label, name_unc = label_from_filename(name)
    meta_label = normalize_label(row.label_text) if row is not None else None
    meta_unc = row is not None and is_uncertain_label(row.label_text)
    if row is not None and row.label_text and meta_label is None:
        warnings.append(f"{rel_s}: metadata label '{row.label_text}' is not a known class; ignored")
    candidates = [("metadata", meta_label, meta_unc), ("folder", facts.folder_label, facts.folder_uncertain),
                  ("file name", name_label, name_unc)]
    given = [(src, lab, unc) for src, lab, unc in candidates if lab]
    if not given:
        return None
    src, label, uncertain = given[0]
    uncertain = uncertain or any(u for _, _, u in given)
    others = {f"{s} says {lab}" for s, lab, _ in given[1:] if lab != label}
    if others:
        warnings.append(f"{rel_s}: label disagreement: {src} says {label}, " + ", ".join(sorted(others))
                        + f"; using {src}")
    return label, bool(uncertain), src


def _choose_probe(rel_s: str, row: _MetaRow | None, facts, warnings: list[str]) -> str:
    """The probe: folder, else metadata, else unknown."""
    if facts.probe and row is not None and row.probe and row.probe != facts.probe:
        warnings.append(f"{rel_s}: probe disagreement: folder says {facts.probe}, metadata says {row.probe}; "
                        "using the folder")
    return facts.probe or (row.probe if row is not None else None) or "unknown"


def _patient_group(name: str, row: _MetaRow | None, facts) -> tuple[str, str]:
    """(patient, rule): metadata, else the patient folder, else the file-name rule."""
    if row is not None and row.patient:
        return (f"src{row.source}-pat{row.patient}" if row.source else f"pat{row.patient}"), "metadata"
    if facts.patient_dir:
        return f"dir-{_num_id(facts.patient_dir) or facts.patient_dir}", "folder"
    key = f"file-{patient_from_filename(name)}"
    return (f"src{row.source}-{key}" if row is not None and row.source else key), "filename"


def _layout(dirs_seen: set[str]) -> str:
    if dirs_seen & {"pocus_videos", "pocus_images"}:
        return "public"
    if any(normalize_label(d) for d in dirs_seen):
        return "class folders"
    return "flat"


def index_dataset(root: str | os.PathLike, probes=None, classes=None,
                  metadata: str | os.PathLike | None = None, verify: bool = False,
                  verify_time_limit_s: float = VERIFY_TIME_LIMIT_S) -> DatasetIndex:
    """Index every recording under `root`, keeping the given probes / classes (lists or comma strings).

    Each media file is opened with `pocovid.media.probe`, which reads its header (frame count, size,
    rate) but decodes no frame. `verify=True` also decodes each file's first and middle frame (at most
    `verify_time_limit_s` seconds a file): a file whose header reads but whose frames do not decode is
    then a failure too. Files that cannot be read or labelled are not indexed but listed in `.failures`
    with a one-line reason, as are folders that cannot be listed (path ending in '/'); files of unknown
    type in `.skipped`; documents (README, CSV, ...) are ignored. A metadata file found in the folder
    that cannot be read is a warning (labels then come from folders and file names). Raises
    `PocovidError` when `root` is not a readable folder or holds no recording at all.
    """
    root_in = Path(root)
    root = _readable_root(root_in)
    probes, classes = parse_probes(probes), parse_classes(classes)
    from pocovid.data.blues import index_blues, is_blues_layout

    if is_blues_layout(root):
        return index_blues(root, probes=probes, classes=classes, verify=verify,
                           verify_time_limit_s=verify_time_limit_s)
    warnings: list[str] = []
    meta_path = Path(metadata) if metadata is not None else _find_metadata(root)
    try:
        meta = read_metadata(meta_path, warnings) if meta_path is not None else {}
    except PocovidError as e:
        if metadata is not None:  # asked for by name: an error
            raise
        warnings.append(f"{e}; ignored: labels from folders and file names")
        meta_path, meta = None, {}
    meta_lower: dict[str, _MetaRow] = {}
    for k, v in meta.items():
        meta_lower.setdefault(k.lower(), v)

    idx = DatasetIndex(root=root, probes=probes, classes=classes, verified=bool(verify))
    if meta_path is not None:
        try:
            idx.metadata = meta_path.resolve().relative_to(root).as_posix()
        except ValueError:
            idx.metadata = str(meta_path)
    dirs_seen: set[str] = set()
    n_media = 0
    matched_meta: set[str] = set()
    unreadable: list[tuple[str, str]] = []
    for path in _walk(root, unreadable):
        rel = path.relative_to(root)
        rel_s, name = rel.as_posix(), path.name
        if meta_path is not None and path.resolve() == meta_path.resolve():
            continue
        kind, reason = _file_kind(path)
        if kind == "ignore":
            continue
        if kind == "skip":
            idx.skipped.append((rel_s, reason))
            continue
        n_media += 1
        if kind == "fail":
            idx.failures.append((rel_s, reason))
            continue
        facts = _path_facts(rel.parts[:-1])
        dirs_seen.update(d.lower() for d in rel.parts[:-1])
        stem = path.stem if path.suffix else name
        row = meta.get(stem) or meta_lower.get(stem.lower())
        if row is not None:
            matched_meta.add(row.filename)
        chosen = _choose_label(rel_s, name, row, facts, warnings)
        if chosen is None:
            idx.failures.append((rel_s, "no label: no metadata row, no class folder, and the file name has no "
                                        "class prefix (Cov, Pneu, Reg, Vir)"))
            continue
        label, uncertain, src = chosen
        pr = _choose_probe(rel_s, row, facts, warnings)
        if (probes is not None and pr not in probes) or (classes is not None and label not in classes):
            continue
        patient, group_from = _patient_group(name, row, facts)
        info, problem = read_recording(path, verify, verify_time_limit_s)
        if problem is not None:
            idx.failures.append((rel_s, problem))
            continue
        if row is not None and row.type in ("video", "image") and row.type != info.kind:
            warnings.append(f"{rel_s}: metadata Type says {row.type}, the file holds "
                            f"{info.n_frames} frame(s): indexed as {info.kind}")
        idx.items.append(DatasetItem(
            path=rel_s, kind=info.kind, probe=pr, label=label, label_uncertain=uncertain, patient=patient,
            fps=round(float(info.fps), 3) if info.fps else None, n_frames=int(info.n_frames),
            width=int(info.width), height=int(info.height), format=info.format,
            source=row.source if row is not None else "",
            findings=row.findings if row is not None else Findings(), license=row.license if row is not None else "",
            label_from={"file name": "filename"}.get(src, src), group_from=group_from, exam=patient,
        ))
        if row is None and meta:
            warnings.append(f"{rel_s}: no row in {meta_path.name}; label from the {src}, patient by the "
                            f"{group_from} rule")

    idx.failures[:0] = unreadable
    if n_media == 0:
        what = f" ({len(idx.skipped)} file(s) of other types)" if idx.skipped else ""
        what += f"; {len(unreadable)} folder(s) could not be read: " + ", ".join(
            f"{path_text(p)} ({r.split(';')[0]})" for p, r in unreadable[:3]) if unreadable else ""
        raise PocovidError(f"{path_text(root_in)}: no recordings found (videos, images or DICOM){what}")
    if meta and meta_path.resolve().parent == root:  # from a parent folder, rows of other folders are expected
        unmatched = sorted(set(meta) - matched_meta)
        if unmatched:
            warnings.append(f"{meta_path.name}: {len(unmatched)} row(s) name no file in the folder: "
                            + ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else ""))
    idx.layout = _layout(dirs_seen)
    in_public = {d.lower() for d in root.parts[-2:]} & {"pocus_videos", "pocus_images"}
    idx.dataset = POCUS_DATASET if idx.layout == "public" or in_public else dataset_name(root.name)
    for it in idx.items:
        it.dataset = idx.dataset
    idx.warnings = warnings
    return idx


def dataset_name(folder_name: str) -> str:
    """A dataset name from a folder's name: lower case, letters, digits and '-' ('My Data_2' -> 'my-data-2')."""
    return re.sub(r"[^a-z0-9]+", "-", folder_name.lower()).strip("-") or "dataset"


def dataset_of_folder(root: Path) -> str:
    """The dataset name `index_dataset` gives a folder, from its layout alone (nothing is read):
    'covid-blues', 'pocus', else the folder's name (`dataset_name`)."""
    from pocovid.data.blues import DATASET, is_blues_layout

    root = Path(root).resolve()
    if is_blues_layout(root):
        return DATASET
    try:
        names = {p.name.lower() for p in root.iterdir() if p.is_dir()}
    except OSError:
        names = set()
    if names & {"pocus_videos", "pocus_images"} or {d.lower() for d in root.parts[-2:]} & {"pocus_videos",
                                                                                           "pocus_images"}:
        return POCUS_DATASET
    return dataset_name(root.name)


def read_recording(path: Path, verify: bool, verify_time_limit_s: float = VERIFY_TIME_LIMIT_S):
    """(info, None) for a recording whose header reads (and, with `verify`, whose first and middle
    frames decode); (None, one-line reason) otherwise. Never raises for a bad file."""
    if path.suffix.lower() in (".dcm", ".dicom", ""):
        problem = _dicom_header_problem(path)
        if problem is not None:
            return None, problem
    try:
        info = probe(path)
    except MediaError as e:
        return None, e.reason
    except Exception as e:  # a decoder bug must not stop a batch; report it like a bad file
        return None, f"cannot read ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
    if verify:
        problem = _decode_problem(path, int(info.n_frames), verify_time_limit_s)
        if problem is not None:
            return None, problem
    return info, None


def exam_label(items: list[DatasetItem]) -> str:
    """The label of an exam (a patient's recordings): its recordings' one label; a disease with
    'regular' recordings beside it is the disease (a patient with pneumonia has normal zones too);
    '' when two diseases disagree."""
    labels = {it.label for it in items}
    if len(labels) > 1:
        labels.discard("regular")
    return labels.pop() if len(labels) == 1 else ""


# ------------------------------------------------------------------------------------------ CSV

INDEX_COLUMNS = ["path", "kind", "probe", "label", "label_uncertain", "label_scope", "patient", "exam", "dataset",
                 "zone", "pcr", "fps", "n_frames", "width", "height", "format", "source", "severity", "license",
                 *FINDING_NAMES, "label_from", "group_from", "root"]


def write_index(index: DatasetIndex, path: str | os.PathLike) -> Path:
    """Write the index as CSV (columns in docs/data.md), atomically; `read_index` reads it back.
    Paths are written with `pocovid.files.path_text` (bytes of a name that are not UTF-8 as `\\xNN`).
    `root` is each row's dataset root (several in a combined index)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(INDEX_COLUMNS)
    for it in index.items:
        f = it.findings.to_row()
        row = [it.path, it.kind, it.probe, it.label, int(it.label_uncertain), it.label_scope, it.patient, it.exam,
               it.dataset, it.zone, "" if it.pcr is None else int(it.pcr),
               "" if it.fps is None else repr(float(it.fps)), it.n_frames, it.width, it.height, it.format,
               it.source, f["severity"], it.license, *(f[k] for k in FINDING_NAMES),
               it.label_from, it.group_from, index.roots.get(it.dataset, index.root)]
        w.writerow([path_text(v) if isinstance(v, (str, Path)) else v for v in row])
    return write_text(path, buf.getvalue())


def read_index(path: str | os.PathLike, root: str | os.PathLike | None = None) -> DatasetIndex:
    """Read an index CSV written by `write_index` (older ones too: findings with their old names,
    no dataset columns). `root` overrides the recorded root of a one-dataset index."""
    path = Path(path)
    if not path.is_file():
        raise PocovidError(f"{path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("path", "kind", "probe", "label", "patient") if c not in (reader.fieldnames or [])]
            if missing:
                raise PocovidError(f"{path}: not a pocovid index (missing column(s) {', '.join(missing)})")
            rows = list(reader)
    except (csv.Error, UnicodeDecodeError) as e:
        raise PocovidError(f"{path}: not a readable CSV file ({' '.join(str(e).split())[:120]})") from None
    items = []
    roots: dict[str, Path] = {}
    for n, r in enumerate(rows, start=2):
        def opt_int(v):
            return int(float(v)) if v not in (None, "") else None
        try:
            item = DatasetItem(
                path=path_from_text(r["path"]), kind=r["kind"], probe=r["probe"], label=r["label"],
                label_uncertain=str(r.get("label_uncertain", "0")).strip().lower() in ("1", "true", "yes"),
                patient=r["patient"], fps=float(r["fps"]) if r.get("fps") else None,
                n_frames=opt_int(r.get("n_frames")) or 0, width=opt_int(r.get("width")) or 0,
                height=opt_int(r.get("height")) or 0, format=r.get("format", "") or "",
                source=r.get("source", "") or "", license=r.get("license", "") or "",
                findings=Findings.from_row(r), label_from=r.get("label_from", "") or "",
                group_from=r.get("group_from", "") or "", dataset=r.get("dataset", "") or "",
                zone=r.get("zone", "") or "", exam=r.get("exam", "") or r["patient"],
                pcr=parse_yes_no(r.get("pcr"))[0], label_scope=r.get("label_scope", "") or "recording",
            )
        except (TypeError, ValueError) as e:
            raise PocovidError(f"{path}: row {n} is not an index row ({' '.join(str(e).split())[:120]})") from None
        items.append(item)
        if r.get("root"):
            roots.setdefault(item.dataset, Path(path_from_text(r["root"])))
    datasets = list(dict.fromkeys(it.dataset for it in items))
    if root is not None:
        root_p = Path(root).resolve()
        roots = {ds: root_p for ds in datasets} if len(datasets) <= 1 else roots
    elif roots:
        root_p = next(iter(roots.values()))
    else:
        root_p = path.resolve().parent
    if len(datasets) > 1:
        return DatasetIndex(root=root_p, items=items, layout="index CSV", metadata=None, roots=roots)
    return DatasetIndex(root=root_p, items=items, layout="index CSV", metadata=None,
                        dataset=datasets[0] if datasets else "")


def combine(indexes: list[DatasetIndex]) -> DatasetIndex:
    """Several datasets as one index: every item keeps its dataset (names made unique: 'pocus',
    'pocus-2'), patient and exam ids are prefixed by it ('covid-blues:pat46') so they never collide,
    and `roots` maps each dataset to its folder. One index is returned as it is."""
    if len(indexes) == 1:
        return indexes[0]
    out = DatasetIndex(root=Path(indexes[0].root), layout="combined", probes=indexes[0].probes,
                       classes=indexes[0].classes, verified=all(ix.verified for ix in indexes))
    for ix in indexes:
        rename: dict[str, str] = {}
        for ds in dict.fromkeys([*(it.dataset for it in ix.items), ix.dataset]):
            name, n = ds or ix.dataset or dataset_name(Path(ix.root).name), 1
            while (new := name if n == 1 else f"{name}-{n}") in out.roots:
                n += 1
            rename[ds] = new
            out.roots[new] = Path(ix.roots.get(ds, ix.root))
        for it in ix.items:
            ds = rename[it.dataset]
            out.items.append(replace(it, dataset=ds, patient=_prefixed(ds, it.patient),
                                     exam=_prefixed(ds, it.exam or it.patient)))
        first = rename[ix.dataset] if ix.dataset in rename else next(iter(rename.values()))
        out.failures += [(f"{first}:{p}", r) for p, r in ix.failures]
        out.skipped += [(f"{first}:{p}", r) for p, r in ix.skipped]
        out.warnings += [f"{first}: {w}" for w in ix.warnings]
    return out


def _prefixed(dataset: str, group: str) -> str:
    return group if group.startswith(f"{dataset}:") else f"{dataset}:{group}"


def load_index(source: str | os.PathLike | list, probes=None, classes=None, verify: bool = False) -> DatasetIndex:
    """A dataset folder (indexed now) or an index CSV (read), filtered by probes / classes; several
    of them (a list) combined into one index (`combine`)."""
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not sources:
        raise PocovidError("no dataset folder given")
    out = []
    for src in sources:
        p = Path(src)
        if p.is_file() and p.suffix.lower() == ".csv":
            idx = read_index(p)
            out.append(idx.filter(probes, classes) if (probes or classes) else idx)
        else:
            out.append(index_dataset(p, probes=probes, classes=classes, verify=verify))
    return combine(out)
