"""What each training recording teaches: its diagnosis target (or none), its findings and severity.

    lookup = index_lookup(roots)                       # (dataset, path) -> DatasetItem, from the index
    t = clip_targets(clips, lookup, cfg)               # ClipTargets: per clip, masked where unknown
    ft = t.frames(frames.clip_of)                      # FrameTargets: the recording's targets per frame

Unknown is never 0: a finding the dataset does not annotate is NaN and its loss is masked; a
severity not given is NaN. The diagnosis target of a recording whose label is the PATIENT's
(`label_scope` 'patient', COVID-BLUES) follows `TrainConfig.weak_labels` (`diagnosis_target`), and a
recording of a class outside `TrainConfig.classes` ('other', 'viral') has no diagnosis target but
still teaches findings and severity (`TrainConfig.outside_classes` = 'targets').
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocovid.data.findings import Findings

#: How a recording labelled with its patient's diagnosis is taught the diagnosis (docs/model_card.md):
#: abnormal_only: a diseased patient's recording only where it shows disease (severity >= 1, or
#:     B-lines / consolidation / pleural irregularity / effusion marked yes); a healthy patient's
#:     recordings as 'regular'; the rest no diagnosis target (findings and severity still taught);
#: all: every recording gets the patient's diagnosis (what a plain per-video label does);
#: none: no diagnosis target from patient-level labels at all (findings and severity only).
WEAK_LABEL_RULES = ("abnormal_only", "all", "none")
#: What becomes of recordings whose class is outside the trained classes ('other', 'viral'):
#: targets: kept for findings and severity, no diagnosis target; drop: not used (before issue 11).
OUTSIDE_CLASSES = ("targets", "drop")
NORMAL_CLASS = "regular"
ABNORMAL_FINDINGS = ("b_lines", "consolidation", "pleural_irregularity", "effusion")


def shows_disease(findings: Findings) -> bool:
    """Severity >= 1 or any abnormal finding marked yes (unknowns count as not shown)."""
    return ((findings.severity is not None and findings.severity >= 1)
            or any(getattr(findings, f) is True for f in ABNORMAL_FINDINGS))


def diagnosis_target(label: str, label_scope: str, findings: Findings, classes: list[str], rule: str) -> int:
    """The class index a recording teaches, or -1 (no diagnosis target). See `WEAK_LABEL_RULES`."""
    if rule not in WEAK_LABEL_RULES:
        raise ValueError(f"unknown weak-label rule {rule!r} (known: {', '.join(WEAK_LABEL_RULES)})")
    if label not in classes:
        return -1
    k = classes.index(label)
    if label_scope != "patient" or rule == "all":
        return k
    if rule == "none":
        return -1
    return k if label == NORMAL_CLASS or shows_disease(findings) else -1


@dataclass
class FrameTargets:
    """Per-frame training targets (the recording's, repeated over its frames).

    y:        (N,) class index, -1 = no diagnosis target
    findings: (N, F) 1 / 0 / NaN (unknown), or None (no findings head)
    severity: (N,) level or NaN (unknown), or None (no severity head)
    """

    y: np.ndarray
    findings: np.ndarray | None = None
    severity: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class ClipTargets:
    """Per-clip targets and what the clip is (exam, zone, dataset, label scope)."""

    y: np.ndarray  # (n_clips,) diagnosis target, -1 = none
    findings: np.ndarray  # (n_clips, F) 1 / 0 / NaN, F = len(names)
    severity: np.ndarray  # (n_clips,) 0..3 or NaN
    names: list[str]  # the findings, in column order
    exam: np.ndarray  # (n_clips,) exam id (the patient's when the index gives none)
    zone: np.ndarray  # (n_clips,) BLUE point or ''
    dataset: np.ndarray
    label_scope: np.ndarray
    label: np.ndarray  # the index's label (the patient's diagnosis where label_scope is 'patient')

    def frames(self, clip_of: np.ndarray, findings: list[str] | None = None, severity: bool = True) -> FrameTargets:
        """The targets of each frame; `findings`: the columns the model predicts (default all)."""
        cols = [self.names.index(f) for f in (self.names if findings is None else findings)]
        return FrameTargets(self.y[clip_of], self.findings[clip_of][:, cols] if cols else None,
                            self.severity[clip_of] if severity else None)

    def usable_findings(self, names: list[str]) -> tuple[list[str], dict[str, str]]:
        """The findings of `names` that can be learned (both yes and no among the clips) and why the
        others are left out."""
        kept, why = [], {}
        for f in names:
            col = self.findings[:, self.names.index(f)]
            yes, no = int(np.sum(col == 1)), int(np.sum(col == 0))
            if yes and no:
                kept.append(f)
            else:
                why[f] = f"{yes} recording(s) marked yes, {no} no: nothing to learn"
        return kept, why

    def fingerprint_data(self) -> list:
        return [self.y.tolist(), np.nan_to_num(self.findings, nan=-1).tolist(),
                np.nan_to_num(self.severity, nan=-1).tolist()]


def index_lookup(roots: dict[str, str | os.PathLike] | str | os.PathLike | None) -> tuple[dict, list[str]]:
    """(dataset, path) -> DatasetItem for the recordings under `roots` (dataset -> folder, or one
    folder: dataset key ''), indexed from headers (fast). A folder that cannot be indexed gives no
    items (its recordings then have unknown findings) and a note."""
    from pocovid.data import index_dataset
    from pocovid.errors import PocovidError

    if roots is None:
        return {}, ["no dataset folder: findings and severity unknown"]
    pairs = roots.items() if isinstance(roots, dict) else [("", roots)]
    out, notes = {}, []
    for ds, folder in pairs:
        try:
            idx = index_dataset(Path(folder))
        except PocovidError as e:
            notes.append(f"{folder}: cannot read the findings ({e}); they are unknown")
            continue
        for it in idx.items:
            out[(ds, it.path)] = it
    return out, notes


def clip_targets(clips: list[dict], lookup: dict, classes: list[str], names: list[str], rule: str) -> ClipTargets:
    """Targets of `clips` (FrameSet.clips: path or dataset + rel, label, patient) from the index
    items in `lookup` (see `index_lookup`); a clip the index does not know has unknown findings and
    a recording-level label."""
    n = len(clips)
    y = np.full(n, -1, np.int64)
    fnd = np.full((n, len(names)), np.nan, np.float32)
    sev = np.full(n, np.nan, np.float32)
    exam, zone, dataset, scope, label = [], [], [], [], []
    for i, c in enumerate(clips):
        it = lookup.get((c.get("dataset", ""), c.get("rel", c["path"])))
        f = it.findings if it is not None else Findings()
        sc = it.label_scope if it is not None else "recording"
        y[i] = diagnosis_target(c["label"], sc, f, classes, rule)
        for j, name in enumerate(names):
            v = getattr(f, name)
            fnd[i, j] = np.nan if v is None else float(v)
        sev[i] = np.nan if f.severity is None else float(f.severity)
        ex = (it.exam if it is not None else "") or c["patient"]
        if it is not None and c.get("dataset") and not ex.startswith(f"{c['dataset']}:"):
            ex = f"{c['dataset']}:{ex}"  # the split's patients are prefixed by the dataset; so are exams
        exam.append(ex)
        zone.append(it.zone if it is not None else "")
        dataset.append(c.get("dataset") or (it.dataset if it is not None else ""))
        scope.append(sc)
        label.append(c["label"])
    return ClipTargets(y, fnd, sev, list(names), np.array(exam, dtype=object).astype(str), np.array(zone, str),
                       np.array(dataset, str), np.array(scope, str), np.array(label, str))
