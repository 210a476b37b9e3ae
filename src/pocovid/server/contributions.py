"""Data contributions: the form's choices, checking a submission, and the export of accepted ones
in the public POCUS dataset's layout.

    export_contributions(db, storage, "out/")     # -> ExportResult(written, skipped)

writes `out/pocus_videos/<probe>/<Prefix>_contrib_<id>.<ext>` (single frames to `pocus_images`)
with the class prefixes of the public dataset (Cov, Pneu, Reg, Vir) and a row per file in
`out/dataset_metadata.csv` with the columns `pocovid data index` reads (Filename, Label, Type,
Probe, Source ID, Patient ID / Name, License, findings, Lung Severity Score). An existing
`dataset_metadata.csv` in `out` is kept: its rows for other files stay, its columns too.

Text a contributor typed is never trusted on the way out: every cell of the CSV goes through
`csv_cell` (a cell starting with = + - @ tab or CR gets a leading ' so that a spreadsheet shows it
as text and never runs it as a formula, per OWASP's CSV injection advice), and `printable` turns
control characters into visible escapes for a terminal (`pocovid contributions list`). The form
refuses control characters in `source` in the first place.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from pocovid.errors import PocovidError
from pocovid.files import atomic_path

#: diagnosis value -> (label written to the metadata, file-name prefix, text on the form)
DIAGNOSES = {
    "covid": ("COVID-19", "Cov", "COVID-19"),
    "pneumonia": ("Bacterial pneumonia", "Pneu", "Bacterial pneumonia"),
    "regular": ("regular", "Reg", "Healthy lung (regular)"),
    "viral": ("Viral pneumonia", "Vir", "Other viral pneumonia"),
}
PROBES = {"unknown": "Not known", "convex": "Convex (curvilinear)", "linear": "Linear"}  # first: the default
LICENSES = ["CC BY 4.0", "CC BY-SA 4.0", "CC BY-NC 4.0", "CC BY-NC-SA 4.0", "CC0 1.0"]
#: finding key (form / API) -> the public metadata's column
FINDINGS = {
    "b_lines": "B-lines",
    "a_lines": "A-lines",
    "consolidation": "Consolidations",
    "effusion": "Effusion",
    "pleural_irregularities": "Pleural line irregularities",
    "air_bronchogram": "Air bronchogram",
}
FINDING_LABELS = {
    "b_lines": "B-lines", "a_lines": "A-lines", "consolidation": "Consolidation", "effusion": "Pleural effusion",
    "pleural_irregularities": "Pleural line irregularities", "air_bronchogram": "Air bronchogram",
}
FINDING_VALUES = {"": None, "unknown": None, "not assessed": None, "0": 0, "no": 0, "absent": 0, "1": 1, "yes": 1,
                  "present": 1, "true": 1, "false": 0, "on": 1}
FORM_FIELDS = ("diagnosis", "probe", "source", "license", "consent", "severity", "case_ref", *FINDINGS)
CASE_REF_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
METADATA_COLUMNS = ["Filename", "Label", "Type", "Probe", "Source ID", "Source", "Patient ID / Name", "License",
                    "B-lines", "A-lines", "Consolidations", "Effusion", "Pleural line irregularities",
                    "Air bronchogram", "Lung Severity Score", "Current location"]


class FormError(ValueError):
    """A contribution form field that is missing or wrong: (field, one-line reason)."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


def csv_cell(value) -> str:
    """`value` as a CSV cell that no spreadsheet runs as a formula: text starting with = + - @ tab
    or CR gets a leading ' (OWASP); plain numbers such as -1 stay as they are."""
    s = "" if value is None else str(value)
    if s.startswith(_FORMULA_START) and not _NUMBER_RE.match(s):
        return "'" + s
    return s


def printable(value) -> str:
    """`value` with control and format characters (escape sequences, bidi overrides, tabs, line
    breaks) shown as escapes such as \\x1b, so that printing it cannot drive a terminal."""
    s = "" if value is None else str(value)
    return "".join(c if not unicodedata.category(c).startswith("C") else c.encode("unicode_escape").decode("ascii")
                   for c in s)


def _has_control(s: str) -> bool:
    return any(unicodedata.category(c).startswith("C") for c in s)


def options() -> dict:
    """The form's choices (the page builds its selects from this)."""
    return {
        "diagnoses": [{"value": k, "label": v[2]} for k, v in DIAGNOSES.items()],
        "probes": [{"value": k, "label": v} for k, v in PROBES.items()],
        "licenses": list(LICENSES),
        "findings": [{"value": k, "label": FINDING_LABELS[k]} for k in FINDINGS],
        "severity": [0, 1, 2, 3],
    }


def parse_form(fields: dict[str, str]) -> dict:
    """Checked contribution fields from the form's text fields; raises FormError."""
    def get(k):
        return (fields.get(k) or "").strip()

    diagnosis = get("diagnosis").lower()
    if diagnosis not in DIAGNOSES:
        raise FormError("diagnosis", f"required, one of {', '.join(DIAGNOSES)}")
    probe = get("probe").lower() or "unknown"
    if probe not in PROBES:
        raise FormError("probe", f"one of {', '.join(PROBES)}")
    source = " ".join(get("source").split())
    if _has_control(source):
        raise FormError("source", "control characters are not allowed")
    if not source:
        raise FormError("source", "required: the institution or source of the recording")
    if len(source) > 200:
        raise FormError("source", "at most 200 characters")
    lic = get("license")
    match = {x.lower(): x for x in LICENSES}.get(lic.lower())
    if match is None:
        raise FormError("license", f"required, one of {', '.join(LICENSES)}")
    consent = get("consent").lower()
    if consent not in ("true", "yes", "on", "1"):
        raise FormError("consent", "required: confirm that consent and the right to share this recording exist")
    findings = {}
    for k in FINDINGS:
        v = get(k).lower()
        if v not in FINDING_VALUES:
            raise FormError(k, "yes, no or empty (not assessed)")
        findings[k] = FINDING_VALUES[v]
    sev = get("severity")
    severity = None
    if sev:
        if sev not in ("0", "1", "2", "3"):
            raise FormError("severity", "a lung severity score 0, 1, 2 or 3, or empty")
        severity = int(sev)
    case_ref = get("case_ref") or None
    if case_ref is not None and not CASE_REF_RE.fullmatch(case_ref):
        raise FormError("case_ref", "1-32 letters, digits, '-' or '_' (your own pseudonym, never a name or ID)")
    return {"diagnosis": diagnosis, "probe": probe, "source": source, "license": match, "findings": findings,
            "severity": severity, "case_ref": case_ref}


@dataclass
class ExportResult:
    out: Path
    written: list[str] = field(default_factory=list)  # paths relative to out
    missing: list[str] = field(default_factory=list)  # contribution ids whose file is gone


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-")[:40] or "source"


def export_contributions(db, storage, out: str | os.PathLike) -> ExportResult:
    """Copy accepted contributions into `out` in the public layout and write their metadata rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = ExportResult(out=out)
    rows = []
    offset = 0
    while True:
        total, page = db.list_contributions(status="accepted", offset=offset, limit=500)
        rows += page
        offset += len(page)
        if not page or offset >= total:
            break
    new_rows: dict[str, dict] = {}
    for c in rows:
        label, prefix, _ = DIAGNOSES[c["diagnosis"]]
        src = storage.resolve(c["file"])
        if not src.is_file():
            res.missing.append(c["id"])
            continue
        top = "pocus_images" if c["kind"] == "image" else "pocus_videos"
        stem = f"{prefix}_contrib_{c['id']}"
        rel = Path(top) / c["probe"] / f"{stem}{c['ext']}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / rel)
        res.written.append(rel.as_posix())
        patient = f"{_slug(c['source'])}-{c['case_ref']}" if c.get("case_ref") else f"contrib-{c['id']}"
        f = c.get("findings") or {}
        row = {
            "Filename": stem, "Label": label, "Type": c["kind"], "Probe": c["probe"] if c["probe"] != "unknown" else "",
            "Source ID": "contrib", "Source": c["source"], "Patient ID / Name": patient, "License": c["license"],
            "Lung Severity Score": "" if c.get("severity") is None else c["severity"],
            "Current location": rel.parent.as_posix(),
        }
        for k, col in FINDINGS.items():
            row[col] = "" if f.get(k) is None else int(f[k])
        new_rows[stem] = row
    meta = out / "dataset_metadata.csv"
    header = list(METADATA_COLUMNS)
    kept: list[dict] = []
    if meta.is_file():
        try:
            with open(meta, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                old_header = list(reader.fieldnames or [])
                kept = [r for r in reader if (r.get("Filename") or "").strip() not in new_rows]
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            raise PocovidError(f"{meta}: cannot read the existing metadata ({e})") from None
        header = old_header + [c for c in METADATA_COLUMNS if c not in old_header]
    with atomic_path(meta) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        for r in kept:
            w.writerow({k: csv_cell(v) for k, v in r.items() if k in header})
        for r in new_rows.values():
            w.writerow({k: csv_cell(v) for k, v in r.items()})
    return res
