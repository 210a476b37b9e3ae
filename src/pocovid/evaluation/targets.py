"""Metrics of the targets beside the diagnosis: findings (yes / no, unknown masked), severity 0-3
(ordinal) and the diagnosis of an exam (a patient's visit) from its clips. See `docs/metrics.md`.

Pure functions on numpy arrays (no torch), shared by training (out-of-fold) and `pocovid evaluate`.
Undefined figures are None, never NaN: every result dumps with `json.dumps(..., allow_nan=False)`.

    finding_metrics(y_true, prob, names)          # (n, F) truth with NaN = unknown, (n, F) probabilities
    severity_metrics(y_true, prob)                # (n,) 0-3 with NaN = unknown, (n, 4) probabilities
    exam_metrics(exam_ids, clip_probs, exam_labels, classes, method="mean")
    exam_table(exam_ids, clip_probs, exam_labels, classes, extra={"patient": ..., "dataset": ...})
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score, roc_auc_score

from pocovid.evaluation.metrics import _groups, _num, _unique_ids, classification_metrics
from pocovid.files import jsonable
from pocovid.models.exam import EXAM_METHODS, exam_probabilities
from pocovid.models.outputs import severity_level

#: The class the binary exam block is about.
POSITIVE_CLASS = "covid"
#: Severity levels (Soldati score).
SEVERITY_LEVELS = (0, 1, 2, 3)


def _ratio(a: int, b: int) -> float | None:
    return a / b if b > 0 else None


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC, None unless both classes are present."""
    if len(np.unique(y)) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _num(roc_auc_score(y, score))


def _binary(y: np.ndarray, pred: np.ndarray, score: np.ndarray) -> dict:
    """n, positives, sensitivity, specificity, precision, F1, accuracy, balanced accuracy, AUC of
    0/1 truth `y`, 0/1 predictions `pred` and scores `score`."""
    y, pred = y.astype(int), pred.astype(int)
    tp = int(np.sum((y == 1) & (pred == 1)))
    fp = int(np.sum((y == 0) & (pred == 1)))
    fn = int(np.sum((y == 1) & (pred == 0)))
    tn = int(np.sum((y == 0) & (pred == 0)))
    n, pos = len(y), tp + fn
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    f1 = None
    if pos or tp + fp:
        f1 = _num(f1_score(y, pred, labels=[0, 1], pos_label=1, zero_division=0))
    return {
        "n": n, "n_positive": pos,
        "prevalence": _ratio(pos, n),
        "sensitivity": sens, "specificity": spec,
        "precision": _ratio(tp, tp + fp),
        "f1": f1,
        "accuracy": _ratio(tp + tn, n),
        "balanced_accuracy": (sens + spec) / 2 if sens is not None and spec is not None else None,
        "auc": _auc(y, score),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


# ---------------------------------------------------------------------------------- findings

def finding_metrics(y_true: np.ndarray, prob: np.ndarray, names: list[str], threshold: float = 0.5) -> dict:
    """Per finding (column of `y_true` / `prob`, named by `names`), over the rows where it is known
    (`y_true` not NaN; a NaN probability is left out too): {name: {"n", "n_positive", "prevalence",
    "sensitivity", "specificity", "precision", "f1", "accuracy", "balanced_accuracy", "auc", "tp",
    "fp", "fn", "tn", "threshold"}}. Predicted yes = probability >= `threshold`. AUC is None unless
    both yes and no are among the known rows; a finding never known has n 0 and None figures."""
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(prob, dtype=float)
    if y.ndim == 1:
        y, p = y[:, None], p.reshape(-1, 1)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"y_true {y.shape} and prob {p.shape} must both be (n, n_findings)")
    names = [str(x) for x in names]
    if len(names) != y.shape[1]:
        raise ValueError(f"{len(names)} names for {y.shape[1]} finding columns")
    known_values = y[np.isfinite(y)]
    if known_values.size and not np.all(np.isin(known_values, (0.0, 1.0))):
        raise ValueError("y_true must hold 0, 1 or NaN (unknown)")
    out = {}
    for j, name in enumerate(names):
        m = np.isfinite(y[:, j]) & np.isfinite(p[:, j])
        yj, pj = y[m, j].astype(int), p[m, j]
        row = _binary(yj, (pj >= threshold).astype(int), pj)
        row["threshold"] = float(threshold)
        out[name] = row
    return jsonable(out)


# ---------------------------------------------------------------------------------- severity

def severity_metrics(y_true: np.ndarray, prob: np.ndarray) -> dict:
    """Severity 0-3 against the truth where it is known (`y_true` not NaN).

    The predicted level is the median level of `prob` (n, 4) (`models.outputs.severity_level`: the
    first level whose cumulative probability reaches 0.5, after normalising each row): for the
    cumulative-logit / CORAL head, the number of thresholds k with P(y > k) > 0.5, the head's own
    decoding and the level the product shows (`analyze`'s `severity.level`, the exam's zones and LUS
    score, predictions.csv). The argmax is kept beside it (`*_argmax`): a weak ordinal head's argmax
    skips the middle levels, its median does not. The expected severity is sum_k k p_k.
    Returns {"n", "kappa" (quadratic weighted Cohen kappa of the median level), "kappa_argmax" (of
    the argmax), "kappa_expected" (of the rounded expected severity), "accuracy" / "mae" (of the
    median level), "accuracy_argmax" / "mae_argmax", "mae_expected" (mean absolute error of the
    expected severity), "confusion_matrix" (4 x 4, rows true, columns the median level),
    "confusion_matrix_argmax", "levels": [0, 1, 2, 3], "support" / "predicted" (median) /
    "predicted_argmax" (count per level)}.
    Kappa is None when it is undefined (n 0, or truth and prediction each one same single level)."""
    y = np.asarray(y_true, dtype=float).reshape(-1)
    p = np.asarray(prob, dtype=float)
    k = len(SEVERITY_LEVELS)
    if p.ndim != 2 or p.shape != (len(y), k):
        raise ValueError(f"prob must be (n, {k}) for {len(y)} severities, got {p.shape}")
    m = np.isfinite(y) & np.all(np.isfinite(p), axis=1)
    y, p = y[m], p[m]
    if y.size and not np.all(np.isin(y, SEVERITY_LEVELS)):
        raise ValueError("y_true must hold severities 0-3 or NaN (unknown)")
    yi = y.astype(int)
    n = len(yi)
    levels = list(SEVERITY_LEVELS)
    if n == 0:
        zeros = np.zeros((k, k), int)
        return jsonable({"n": 0, "kappa": None, "kappa_argmax": None, "kappa_expected": None,
                         "accuracy": None, "accuracy_argmax": None, "mae": None, "mae_argmax": None,
                         "mae_expected": None, "confusion_matrix": zeros, "confusion_matrix_argmax": zeros,
                         "levels": levels, "support": [0] * k, "predicted": [0] * k, "predicted_argmax": [0] * k})
    s = p.sum(axis=1, keepdims=True)
    p = np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / k)
    pred = severity_level(p)
    pred_argmax = p.argmax(axis=1)
    expected = p @ np.asarray(levels, dtype=float)
    pred_expected = np.clip(np.rint(expected), 0, k - 1).astype(int)
    cm = confusion_matrix(yi, pred, labels=levels)
    cm_argmax = confusion_matrix(yi, pred_argmax, labels=levels)
    return jsonable({
        "n": n,
        "kappa": _kappa(yi, pred),
        "kappa_argmax": _kappa(yi, pred_argmax),
        "kappa_expected": _kappa(yi, pred_expected),
        "accuracy": float(np.mean(pred == yi)),
        "accuracy_argmax": float(np.mean(pred_argmax == yi)),
        "mae": float(np.mean(np.abs(pred - yi))),
        "mae_argmax": float(np.mean(np.abs(pred_argmax - yi))),
        "mae_expected": float(np.mean(np.abs(expected - yi))),
        "confusion_matrix": cm,
        "confusion_matrix_argmax": cm_argmax,
        "levels": levels,
        "support": cm.sum(axis=1),
        "predicted": cm.sum(axis=0),
        "predicted_argmax": cm_argmax.sum(axis=0),
    })


def _kappa(y: np.ndarray, pred: np.ndarray) -> float | None:
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        return _num(cohen_kappa_score(y, pred, labels=list(SEVERITY_LEVELS), weights="quadratic"))


# -------------------------------------------------------------------------------------- exams

def aggregate_exams(exam_ids: Sequence, clip_probs: np.ndarray, classes: Sequence[str], method: str = "mean", *,
                    params: dict | None = None, findings: np.ndarray | None = None,
                    severity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(exam ids in order of first appearance, (n_exams, C) probabilities, clips per exam).

    `method`: one of `pocovid.models.exam.EXAM_METHODS`, computed by its `exam_probabilities` (the
    one definition `pocovid exam` and the service use): mean, max, noisy_or, or a fitted combiner
    (logistic, logistic_signs: `params` from the model file; `findings` / `severity`: the clips'
    finding and severity probabilities, which logistic_signs reads)."""
    if method not in EXAM_METHODS:
        raise ValueError(f"unknown exam aggregation {method!r}; methods: {', '.join(EXAM_METHODS)}")
    classes = [str(c) for c in classes]
    p = np.asarray(clip_probs, dtype=float)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise ValueError(f"clip_probs must be (n_clips, {len(classes)}), got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("clip_probs contains NaN or inf")
    ids, first_pos, inverse = _groups(exam_ids)
    if len(ids) != len(p):
        raise ValueError(f"{len(ids)} exam ids for {len(p)} clips")
    counts = np.bincount(inverse, minlength=len(first_pos))
    # exams numbered by first appearance: exam_probabilities returns them in that order, 0, 1, ...
    _, probs = exam_probabilities(p, inverse, method, classes=classes, params=params, findings=findings,
                                  severity=severity)
    return _unique_ids(exam_ids, ids, first_pos), probs, counts


def _exam_label(exam_labels: Mapping, exam: Any, classes: list[str]) -> str:
    """The exam's class name ('' when unknown); an integer label is an index into `classes`."""
    v = exam_labels.get(exam, exam_labels.get(str(exam)))
    if v is None:
        return ""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return classes[int(v)]
    return str(v)


def exam_table(exam_ids: Sequence, clip_probs: np.ndarray, exam_labels: Mapping, classes: Sequence[str],
               method: str = "mean", extra: Mapping[str, Sequence] | None = None, **combiner) -> list[dict]:
    """One row per exam for `patients.csv`: exam, label ('' when unknown), predicted (argmax),
    p_<class>..., n_clips, then each `extra` column (one value per clip, e.g. patient, dataset; the
    exam's first clip's value is kept). `combiner`: params / findings / severity of `aggregate_exams`."""
    classes = [str(c) for c in classes]
    ids, probs, counts = aggregate_exams(exam_ids, clip_probs, classes, method, **combiner)
    _, first_pos, _ = _groups(exam_ids)
    extra_cols = {}
    for col, values in (extra or {}).items():
        v = list(values)
        if len(v) != len(np.asarray(clip_probs)):
            raise ValueError(f"extra column {col!r} has {len(v)} values for {len(np.asarray(clip_probs))} clips")
        extra_cols[col] = v
    rows = []
    for j, ex in enumerate(ids.tolist()):
        row: dict[str, Any] = {"exam": ex, "label": _exam_label(exam_labels, ex, classes),
                               "predicted": classes[int(probs[j].argmax())]}
        row.update({f"p_{c}": float(probs[j, k]) for k, c in enumerate(classes)})
        row["n_clips"] = int(counts[j])
        for col, v in extra_cols.items():
            row[col] = jsonable(v[first_pos[j]])
        rows.append(row)
    return rows


def exam_metrics(exam_ids: np.ndarray, clip_probs: np.ndarray, exam_labels: dict, classes: list[str],
                 method: str = "mean", **combiner) -> dict:
    """Exam-level diagnosis: each exam's clips aggregated (`aggregate_exams`, `method`, `combiner`:
    its params / findings / severity), then

      - "classification": `classification_metrics` over the exams whose label is one of `classes`;
      - "covid_vs_rest": COVID-19 vs not over every exam with a known label (a label outside
        `classes`, e.g. 'other', counts as not COVID-19): predicted COVID-19 = the argmax is covid;
        n, n_positive, accuracy, balanced_accuracy, sensitivity, specificity, precision, f1, auc (of
        the exam's COVID probability); absent when `classes` has no covid;
      - "method", "n_exams" (all), "n_labelled", "n_clips".

    `exam_labels`: exam id -> class name (or index into `classes`); exams without one are left out.
    """
    classes = [str(c) for c in classes]
    ids, probs, _ = aggregate_exams(exam_ids, clip_probs, classes, method, **combiner)
    labels = [_exam_label(exam_labels, ex, classes) for ex in ids.tolist()]
    known = np.array([bool(lab) for lab in labels], dtype=bool)
    in_classes = np.array([lab in classes for lab in labels], dtype=bool)
    y = np.array([classes.index(lab) if lab in classes else -1 for lab in labels], dtype=int)
    out: dict[str, Any] = {
        "method": method, "n_exams": len(ids), "n_labelled": int(known.sum()),
        "n_clips": int(np.asarray(clip_probs).shape[0]),
        "classification": classification_metrics(y[in_classes], probs[in_classes], classes),
    }
    if POSITIVE_CLASS in classes:
        c = classes.index(POSITIVE_CLASS)
        yb = np.array([lab == POSITIVE_CLASS for lab in labels], dtype=int)[known]
        pb = probs[known]
        block = _binary(yb, (pb.argmax(axis=1) == c).astype(int) if len(pb) else np.zeros(0, int),
                        pb[:, c] if len(pb) else np.zeros(0))
        out["covid_vs_rest"] = block
    return jsonable(out)
