"""Writing evaluation outputs (metrics.json, predictions.csv, PNG plots) and a terminal summary.

Layout of OUTDIR and the file formats: `docs/metrics.md`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pocovid.evaluation.metrics import PER_CLASS_METRICS
from pocovid.files import atomic_path, jsonable, write_json

#: Plots written by `write_evaluation`, by key of the returned dict.
PLOT_FILES = {
    "confusion_video": "confusion_video.png",
    "confusion_frame": "confusion_frame.png",
    "roc_video": "roc_video.png",
    "reliability_video": "reliability_video.png",
}


def _rows(clip_table: Any) -> list[dict]:
    """A list of dicts from a list of mappings or a mapping of columns."""
    if clip_table is None:
        return []
    if isinstance(clip_table, Mapping):
        cols = {k: list(v) for k, v in clip_table.items()}
        n = {len(v) for v in cols.values()}
        if len(n) > 1:
            raise ValueError(f"clip_table columns have different lengths: {sorted(n)}")
        length = n.pop() if n else 0
        return [{k: v[i] for k, v in cols.items()} for i in range(length)]
    rows = []
    for r in clip_table:
        if not isinstance(r, Mapping):
            raise TypeError(f"clip_table rows must be mappings (column -> value), got {type(r).__name__}")
        rows.append(dict(r))
    return rows


def _label_name(v: Any, labels: Sequence[str]) -> str:
    if v is None:
        return ""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return labels[int(v)]
    return str(v)


def _prediction_rows(clip_table: Any, labels: Sequence[str]) -> tuple[list[str], list[dict]]:
    """(CSV columns, rows): path, label, predicted, p_<class>..., then the other columns in order of
    first appearance. A row may give its probabilities as "probs" (a sequence) instead of p_<class>;
    "predicted" is the argmax of the probabilities when the row does not give it."""
    pcols = [f"p_{c}" for c in labels]
    out, extra = [], []
    for r in _rows(clip_table):
        probs = r.pop("probs", None)
        if probs is not None:
            probs = np.asarray(probs, dtype=float).reshape(-1)
            if probs.size != len(labels):
                raise ValueError(f"row {r.get('path')!r}: {probs.size} probabilities for {len(labels)} labels")
            for c, v in zip(pcols, probs):
                r[c] = float(v)
        r["label"] = _label_name(r.get("label"), labels)
        if r.get("predicted") is None and all(r.get(c) is not None for c in pcols):
            r["predicted"] = labels[int(np.argmax([float(r[c]) for c in pcols]))]
        else:
            r["predicted"] = _label_name(r.get("predicted"), labels)
        for k in r:
            if k not in ("path", "label", "predicted", *pcols) and k not in extra:
                extra.append(k)
        out.append(r)
    return ["path", "label", "predicted", *pcols, *extra], out


def _cell(v: Any) -> Any:
    v = jsonable(v)
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def write_csv(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in columns])
    return path


def write_patients(path: str | os.PathLike, exam_table: Any, labels: Sequence[str]) -> Path:
    """patients.csv: one row per exam: exam, patient, dataset, label, predicted, p_<class>..., n_clips,
    then any other columns of the rows."""
    rows = _rows(exam_table)
    first = ["exam", "patient", "dataset", "label", "predicted", *(f"p_{c}" for c in labels), "n_clips"]
    columns = [c for c in first if c in ("exam", "label", "predicted") or any(c in r for r in rows)]
    for r in rows:
        columns += [k for k in r if k not in columns]
    return write_csv(path, columns, rows)


def write_evaluation(outdir: str | os.PathLike, *, metrics: Mapping, clip_table: Any,
                     labels: Sequence[str], skipped: Iterable = (), plots: bool = True,
                     exam_table: Any = None) -> dict[str, Path]:
    """Write OUTDIR/metrics.json, OUTDIR/predictions.csv, with `exam_table` OUTDIR/patients.csv and
    (with `plots`) the PNG plots.

    `metrics`: an `evaluation_result` body ({"video", "frame", ...}); "skipped" is set to
    `skipped` (one entry per input left out, e.g. "file: reason"; when empty, what `metrics`
    already holds is kept). `clip_table`: one row per clip (list of dicts, or a dict of columns),
    e.g. from `clip_predictions`: path, label, predicted, p_<class> (or "probs"), and any extra
    columns (patient, fold, n_frames, ...). `exam_table`: one row per exam (`exam_table` of
    `pocovid.evaluation.targets`: exam, label, predicted, p_<class>, n_clips, patient, dataset, ...).
    Returns {"metrics", "predictions", "patients", "confusion_video",
    "confusion_frame", "roc_video", "reliability_video"} -> path, for the files written.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    labels = [str(x) for x in labels]
    body = dict(metrics)
    skipped = list(skipped)
    body["skipped"] = skipped if skipped else list(body.get("skipped") or [])
    written: dict[str, Path] = {"metrics": write_json(out / "metrics.json", body)}
    columns, rows = _prediction_rows(clip_table, labels)
    written["predictions"] = write_csv(out / "predictions.csv", columns, rows)
    if exam_table is not None:
        written["patients"] = write_patients(out / "patients.csv", exam_table, labels)
    if not plots:
        return written

    from pocovid.evaluation import plots as P  # matplotlib only when plotting

    video, frame = body.get("video"), body.get("frame")
    if video and video.get("n"):
        written["confusion_video"] = P.plot_confusion_matrices(
            video, out / PLOT_FILES["confusion_video"], title=f"Clips ({body.get('aggregation', 'mean')} of frames)")
        written["reliability_video"] = P.plot_reliability(video, out / PLOT_FILES["reliability_video"],
                                                          title="Clips: reliability")
    if frame and frame.get("n"):
        written["confusion_frame"] = P.plot_confusion_matrices(frame, out / PLOT_FILES["confusion_frame"],
                                                               title="Frames")
    pcols = [f"p_{c}" for c in labels]
    labelled = [r for r in rows if r.get("label") in labels and all(r.get(c) not in (None, "") for c in pcols)]
    if labelled:
        y = np.asarray([labels.index(r["label"]) for r in labelled], dtype=int)
        p = np.asarray([[float(r[c]) for c in pcols] for r in labelled], dtype=float)
        written["roc_video"] = P.plot_roc(y, p, labels, out / PLOT_FILES["roc_video"],
                                          title=f"Clips: ROC, one class vs rest (n = {len(y)})")
    return written


# ------------------------------------------------------------------------------------ summary

def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def _ms(stat: Mapping | None) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.3f}±{stat['std']:.3f}"


_SCALARS = (("n", "n"), ("accuracy", "accuracy"), ("balanced_accuracy", "bal.acc"), ("mcc", "MCC"),
            ("macro_auc", "macroAUC"), ("ece", "ECE"))
_CLASS_HEAD = {"sensitivity": "sens", "specificity": "spec", "precision": "prec", "f1": "F1", "auc": "AUC"}


def format_summary(metrics: Mapping) -> str:
    """A short plain-text table of an `evaluation_result` body (or of one `classification_metrics`
    result): per level n, accuracy, balanced accuracy, MCC, macro AUC, ECE, then per class
    sensitivity / specificity / precision / F1 / AUC; fold mean ± std lines when "folds" is there."""
    if "per_class" in metrics:  # a single classification_metrics result
        metrics = {"result": metrics}
    folds = metrics.get("folds") or {}
    levels = [k for k in ("video", "frame", "result") if isinstance(metrics.get(k), Mapping)]
    lines: list[str] = []
    agg = metrics.get("aggregation")
    if agg:
        lines.append(f"clip score: {agg} of frame probabilities")
    w = 13
    head = f"{'':<14}" + "".join(f"{h:>{w}}" for _, h in _SCALARS)
    lines.append(head)
    for lev in levels:
        m = metrics[lev]
        name = {"video": "clips", "frame": "frames", "result": "all"}[lev]
        cells = [str(m.get("n", "-"))] + [_f(m.get(k)) for k, _ in _SCALARS[1:]]
        lines.append(f"{name:<14}" + "".join(f"{c:>{w}}" for c in cells))
        fs = folds.get(lev) if lev in ("video", "frame") else None
        if fs:
            cells = [f"{fs.get('n_folds', '?')} folds"] + [_ms(fs.get(k)) for k, _ in _SCALARS[1:]]
            lines.append(f"{'  fold mean±sd':<14}" + "".join(f"{c:>{w}}" for c in cells))
    for lev in levels:
        m = metrics[lev]
        name = {"video": "clips", "frame": "frames", "result": "all"}[lev]
        fs = (folds.get(lev) or {}).get("per_class", {}) if lev in ("video", "frame") else {}
        lines.append("")
        lines.append(f"{name + ' per class':<22}" + "".join(f"{_CLASS_HEAD[k]:>{w}}" for k in PER_CLASS_METRICS)
                     + f"{'support':>{w}}")
        for cname, pc in m.get("per_class", {}).items():
            lines.append(f"  {cname:<20}" + "".join(f"{_f(pc.get(k)):>{w}}" for k in PER_CLASS_METRICS)
                         + f"{pc.get('support', '-'):>{w}}")
            if cname in fs:
                lines.append(f"  {'  fold mean±sd':<20}" + "".join(f"{_ms(fs[cname].get(k)):>{w}}"
                                                                    for k in PER_CLASS_METRICS))
    lines += _target_lines(metrics)
    sk = metrics.get("skipped") or []
    if sk:
        lines.append("")
        lines.append(f"skipped: {len(sk)} input(s)")
    return "\n".join(lines)


def _target_lines(metrics: Mapping) -> list[str]:
    """Summary lines of the exams, findings and severity blocks (when the result has them)."""
    lines: list[str] = []
    ex = metrics.get("exams")
    if isinstance(ex, Mapping):
        c, b = ex.get("classification") or {}, ex.get("covid_vs_rest") or {}
        lines += ["", f"exams ({ex.get('method')} of clips): n {ex.get('n_exams')}, accuracy {_f(c.get('accuracy'))}, "
                      f"bal.acc {_f(c.get('balanced_accuracy'))}, macroAUC {_f(c.get('macro_auc'))}"]
        if b:
            lines.append(f"  COVID-19 vs not: n {b.get('n')}, accuracy {_f(b.get('accuracy'))}, "
                         f"bal.acc {_f(b.get('balanced_accuracy'))}, sens {_f(b.get('sensitivity'))}, "
                         f"spec {_f(b.get('specificity'))}, AUC {_f(b.get('auc'))}")
    fi = metrics.get("findings")
    if isinstance(fi, Mapping) and fi:
        w = 13
        head = "".join(f"{h:>{w}}" for h in ("n", "sens", "spec", "F1", "AUC"))
        lines += ["", f"{'findings (recordings)':<22}" + head]
        for name, m in fi.items():
            cells = [str(m.get("n", "-"))] + [_f(m.get(k)) for k in ("sensitivity", "specificity", "f1", "auc")]
            lines.append(f"  {name:<20}" + "".join(f"{c:>{w}}" for c in cells))
    sv = metrics.get("severity")
    if isinstance(sv, Mapping):
        lines += ["", f"severity (recordings, median level): n {sv.get('n')}, weighted kappa {_f(sv.get('kappa'))} "
                      f"(argmax: {_f(sv.get('kappa_argmax'))}, expected value: {_f(sv.get('kappa_expected'))}), "
                      f"accuracy {_f(sv.get('accuracy'))}, MAE {_f(sv.get('mae'))} (expected value "
                      f"{_f(sv.get('mae_expected'))})"]
    return lines
