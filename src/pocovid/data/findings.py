"""One vocabulary of per-recording findings across datasets (docs/data.md#findings).

Every target may be unknown (`None`): a dataset that does not annotate a finding leaves it unknown,
never 0, so that training can mask it. `severity` is the Soldati lung score 0-3 (the POCUS metadata's
`Lung Severity Score`, COVID-BLUES' `Severity Score`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

#: The yes/no findings, in the order of the index CSV.
FINDING_NAMES = ("b_lines", "a_lines", "consolidation", "effusion", "pleural_irregularity", "air_bronchogram")
#: Every per-recording target: the findings and the severity score.
TARGETS = (*FINDING_NAMES, "severity")

#: The public POCUS metadata's columns (0/1) -> finding.
POCUS_FINDING_COLUMNS = {
    "b_lines": "B-lines",
    "a_lines": "A-lines",
    "consolidation": "Consolidations",
    "effusion": "Effusion",
    "pleural_irregularity": "Pleural line irregularities",
    "air_bronchogram": "Air bronchogram",
}
POCUS_SEVERITY_COLUMN = "Lung Severity Score"
#: COVID-BLUES' severity.csv columns (yes/no) -> finding; the other findings are not annotated there.
BLUES_FINDING_COLUMNS = {"b_lines": "B-lines", "a_lines": "A-lines"}
BLUES_SEVERITY_COLUMN = "Severity Score"

# Index CSV columns of earlier pocovid versions (read back by `read_index`).
LEGACY_COLUMNS = {"consolidation": "consolidations", "pleural_irregularity": "pleural_irregularities"}

_UNKNOWN = {"", "nan", "n/a", "na", "nd", "-", "?", "unknown", "none"}
_YES = {"1", "yes", "y", "true"}
_NO = {"0", "no", "n", "false"}


@dataclass(frozen=True)
class Findings:
    """A recording's targets: each yes (True), no (False) or unknown (None); severity 0-3 or None."""

    b_lines: bool | None = None
    a_lines: bool | None = None
    consolidation: bool | None = None
    effusion: bool | None = None
    pleural_irregularity: bool | None = None
    air_bronchogram: bool | None = None
    severity: int | None = None

    def known(self) -> list[str]:
        """The targets that are not unknown."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_row(self) -> dict[str, str]:
        """CSV cells: '1' / '0' for yes / no, the score for severity, '' for unknown."""
        return {name: "" if (v := getattr(self, name)) is None else str(int(v)) for name in TARGETS}

    @classmethod
    def from_row(cls, row: dict) -> Findings:
        """From an index CSV row (`to_row`'s cells; the older column names are read too)."""
        def cell(name: str) -> str | None:
            v = row.get(name)
            return row.get(LEGACY_COLUMNS.get(name, name)) if v is None else v
        return cls(**{n: parse_yes_no(cell(n))[0] for n in FINDING_NAMES}, severity=parse_severity(cell("severity"))[0])


def parse_yes_no(text: str | None) -> tuple[bool | None, bool]:
    """(value, valid): '1', '1.0', 'yes' -> True; '0', 'no' -> False; '' / 'n/a' -> None;
    anything else -> (None, False). Case and surrounding spaces are ignored ('yes ' is yes)."""
    t = (text or "").strip().lower()
    if t in _UNKNOWN:
        return None, True
    if t in _YES or t in _NO:
        return t in _YES, True
    try:
        f = float(t)
    except ValueError:
        return None, False
    if f in (0.0, 1.0):
        return f == 1.0, True
    return None, False


def parse_severity(text: str | None) -> tuple[int | None, bool]:
    """(score, valid): '2', '2.0' -> 2; '' -> None; anything not a whole number 0-3 -> (None, False)."""
    t = (text or "").strip().lower()
    if t in _UNKNOWN:
        return None, True
    try:
        f = float(t)
    except ValueError:
        return None, False
    if f.is_integer() and 0 <= f <= 3:
        return int(f), True
    return None, False
