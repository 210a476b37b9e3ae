"""Classification metrics for frames and clips, shared by training (out-of-fold) and `pocovid evaluate`.

Pure functions on numpy arrays (no torch). sklearn computes every figure it has a function for;
what sklearn leaves undefined (a class without positives, an empty bin, ...) is `None` here, never
NaN, so that every result dumps with `json.dumps(..., allow_nan=False)`. See `docs/metrics.md`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pocovid.files import jsonable
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

#: Ways of turning frame probabilities into one clip probability vector (`aggregate_frames`).
AGGREGATION_METHODS = ("mean", "vote", "logmean", "max")
#: Scalar metrics summarised over folds (`fold_summary`).
SCALAR_METRICS = ("accuracy", "balanced_accuracy", "mcc", "macro_auc", "ece")
#: Per-class metrics summarised over folds.
PER_CLASS_METRICS = ("sensitivity", "specificity", "precision", "f1", "auc")
#: Equal-width confidence bins of the expected calibration error.
N_CALIBRATION_BINS = 10

_LOG_EPS = 1e-12     # floor of a probability before its log ("logmean")
_VOTE_TIE_EPS = 1e-6  # weight of the mean probability that breaks vote ties ("vote")


# ------------------------------------------------------------------------------------ helpers

def _num(x: Any) -> float | None:
    """A plain float, or None for NaN / inf / None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _check_probs(probs: Any, n_classes: int | None = None) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"probs must be a 2-D array (n, n_classes), got shape {p.shape}")
    if n_classes is not None and p.shape[1] != n_classes:
        raise ValueError(f"probs has {p.shape[1]} columns but there are {n_classes} labels")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or inf")
    return p


def _label_indices(y_true: Any, labels: Sequence[str]) -> np.ndarray:
    """Integer labels; class names (strings) are looked up in `labels`."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        y = y.reshape(-1)
    if y.dtype.kind in "USO":
        index = {str(name): i for i, name in enumerate(labels)}
        out = []
        for v in y.tolist():
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                out.append(int(v))
            elif str(v) in index:
                out.append(index[str(v)])
            else:
                raise ValueError(f"unknown label {v!r}; labels are {list(labels)}")
        y = np.asarray(out, dtype=int)
    elif y.dtype.kind == "f":
        if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("y_true must hold integer class indices")
        y = y.astype(int)
    elif y.size == 0:
        y = y.astype(int)
    elif y.dtype.kind not in "iub":
        raise ValueError(f"y_true must hold integer class indices or class names, got dtype {y.dtype}")
    y = y.astype(int)
    if y.size and (y.min() < 0 or y.max() >= len(labels)):
        raise ValueError(f"y_true holds class index {int(y.min() if y.min() < 0 else y.max())}, "
                         f"outside 0..{len(labels) - 1} ({list(labels)})")
    return y


def _normalise_rows(a: np.ndarray) -> np.ndarray:
    s = a.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(s > 0, a / np.where(s > 0, s, 1.0), 1.0 / a.shape[1])
    return out


# ------------------------------------------------------------------------------- aggregation

def _groups(clip_ids: Sequence) -> tuple[list, np.ndarray, np.ndarray]:
    """(ids as a list, position of each clip's first frame, clip number of each frame); clips are
    numbered in order of first appearance."""
    ids = list(clip_ids)
    number: dict[Any, int] = {}
    inverse = np.empty(len(ids), dtype=int)
    first_pos: list[int] = []
    for i, c in enumerate(ids):
        k = number.get(c)
        if k is None:
            k = number[c] = len(first_pos)
            first_pos.append(i)
        inverse[i] = k
    return ids, np.asarray(first_pos, dtype=int), inverse


def _unique_ids(clip_ids: Sequence, ids: list, first_pos: np.ndarray) -> np.ndarray:
    """The ids of `first_pos` as an array: the caller's array type when it gave one, a string array
    for string ids, else an object array (mixed types are not converted)."""
    if isinstance(clip_ids, np.ndarray) and clip_ids.ndim == 1:
        return clip_ids[first_pos]
    picked = [ids[i] for i in first_pos]
    if picked and all(isinstance(c, str) for c in picked):
        return np.asarray(picked)
    arr = np.empty(len(picked), dtype=object)
    arr[:] = picked
    return arr


def aggregate_frames(probs: np.ndarray, clip_ids: Sequence, method: str = "mean"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Clip probabilities from frame probabilities.

    Returns (unique clip ids in order of first appearance, (n_clips, n_classes) probabilities).
    Methods:
      - "mean": mean of the frame probabilities (default);
      - "vote": share of the clip's frames whose argmax is each class; ties between classes are
        broken by the mean probability (added with weight 1e-6, then renormalised);
      - "logmean": mean of log-probabilities, exponentiated and renormalised (geometric mean);
      - "max": largest probability of each class over the frames, renormalised.
    """
    if method not in AGGREGATION_METHODS:
        raise ValueError(f"unknown aggregation method {method!r}; methods: {', '.join(AGGREGATION_METHODS)}")
    p = _check_probs(probs)
    ids, first_pos, inverse = _groups(clip_ids)
    if len(ids) != p.shape[0]:
        raise ValueError(f"{len(ids)} clip ids for {p.shape[0]} frames")
    unique_ids = _unique_ids(clip_ids, ids, first_pos)

    n_clips, n_classes = len(first_pos), p.shape[1]
    counts = np.bincount(inverse, minlength=n_clips).astype(float)[:, None] if n_clips else np.zeros((0, 1))

    def group_sum(values: np.ndarray) -> np.ndarray:
        out = np.zeros((n_clips, n_classes))
        np.add.at(out, inverse, values)
        return out

    if method == "mean":
        agg = group_sum(p) / counts
    elif method == "vote":
        onehot = np.zeros_like(p)
        if p.shape[0]:
            onehot[np.arange(p.shape[0]), p.argmax(axis=1)] = 1.0
        share = group_sum(onehot) / counts
        mean = group_sum(p) / counts
        agg = _normalise_rows(share + _VOTE_TIE_EPS * mean)
    elif method == "logmean":
        logp = np.log(np.clip(p, _LOG_EPS, None))
        g = group_sum(logp) / counts
        g = g - g.max(axis=1, keepdims=True) if n_clips else g
        agg = _normalise_rows(np.exp(g))
    else:  # max
        agg = np.full((n_clips, n_classes), -np.inf)
        np.maximum.at(agg, inverse, p)
        agg = _normalise_rows(np.clip(agg, 0.0, None))
    return unique_ids, agg


def clip_labels(y_true_frames: Any, clip_ids: Sequence, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(unique clip ids in first-appearance order, one label index per clip). A clip whose frames
    carry different labels is an error (ValueError)."""
    y = _label_indices(y_true_frames, labels)
    ids, first_pos, inverse = _groups(clip_ids)
    if len(ids) != len(y):
        raise ValueError(f"{len(ids)} clip ids for {len(y)} frame labels")
    y_clip = y[first_pos]
    bad = np.flatnonzero(y != y_clip[inverse])
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"clip {ids[i]!r} has frames labelled {labels[int(y_clip[inverse[i]])]!r} "
                         f"and {labels[int(y[i])]!r}")
    return _unique_ids(clip_ids, ids, first_pos), y_clip.astype(int)


# ---------------------------------------------------------------------------------- metrics

def calibration(y_true: np.ndarray, probs: np.ndarray, n_bins: int = N_CALIBRATION_BINS) -> dict:
    """Top-label calibration: `n_bins` equal-width confidence bins on [0, 1] (the last closed).

    Returns {"ece", "bin_edges", "bin_confidence", "bin_accuracy", "bin_count"}; empty bins have
    confidence / accuracy None. ECE = sum_b (n_b / n) |accuracy_b - confidence_b|; None when n = 0.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=float)
    edges = np.round(np.linspace(0.0, 1.0, n_bins + 1), 10)
    conf = np.clip(p.max(axis=1), 0.0, 1.0) if p.size else np.zeros(0)
    correct = (p.argmax(axis=1) == y).astype(float) if p.size else np.zeros(0)
    # bin b holds b/n_bins <= conf < (b+1)/n_bins (conf == 1 in the last bin); computed from
    # conf * n_bins, not from the float edges, so that 0.6 lands in [0.6, 0.7)
    which = np.clip(np.floor(conf * n_bins + 1e-9).astype(int), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    bin_conf: list[float | None] = []
    bin_acc: list[float | None] = []
    ece = 0.0
    for b in range(n_bins):
        m = which == b
        if counts[b] == 0:
            bin_conf.append(None)
            bin_acc.append(None)
            continue
        c, a = float(conf[m].mean()), float(correct[m].mean())
        bin_conf.append(c)
        bin_acc.append(a)
        ece += counts[b] / len(y) * abs(a - c)
    return {"ece": float(ece) if len(y) else None, "bin_edges": edges.tolist(),
            "bin_confidence": bin_conf, "bin_accuracy": bin_acc, "bin_count": counts.astype(int).tolist()}


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> dict:
    """Every figure of one set of predictions; predictions are the argmax of `probs`.

    `y_true`: class indices into `labels` (or class names). `probs`: (n, len(labels)).
    Undefined figures are None (never NaN): sensitivity without support, specificity without
    negatives, precision without predictions of the class, AUC of a class without both positives
    and negatives. See `docs/metrics.md` for the definitions and the returned keys.
    """
    labels = [str(x) for x in labels]
    n_classes = len(labels)
    if n_classes < 2:
        raise ValueError(f"need at least 2 labels, got {labels}")
    p = _check_probs(probs, n_classes)
    y = _label_indices(y_true, labels)
    if len(y) != p.shape[0]:
        raise ValueError(f"{len(y)} labels for {p.shape[0]} probability rows")
    n = int(len(y))
    cls = list(range(n_classes))
    y_pred = p.argmax(axis=1) if n else np.zeros(0, dtype=int)

    cm = confusion_matrix(y, y_pred, labels=cls) if n else np.zeros((n_classes, n_classes), dtype=int)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on classes absent from y_true / y_pred
        if n:
            accuracy = _num(accuracy_score(y, y_pred))
            balanced = _num(balanced_accuracy_score(y, y_pred))
            mcc = _num(matthews_corrcoef(y, y_pred))
            prec, rec, f1, _ = precision_recall_fscore_support(
                y, y_pred, labels=cls, average=None, zero_division=np.nan)
        else:
            accuracy = balanced = mcc = None
            prec = rec = f1 = np.full(n_classes, np.nan)

    per_class: dict[str, dict] = {}
    aucs = []
    for k, name in enumerate(labels):
        tp = int(cm[k, k])
        fp = int(predicted[k] - tp)
        fn = int(support[k] - tp)
        tn = int(n - tp - fp - fn)
        pos = int(support[k])
        neg = n - pos
        auc = None
        if pos > 0 and neg > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                auc = _num(roc_auc_score((y == k).astype(int), p[:, k]))
        if auc is not None:
            aucs.append(auc)
        per_class[name] = {
            "sensitivity": _num(rec[k]) if pos > 0 else None,
            "specificity": tn / neg if neg > 0 else None,
            "precision": _num(prec[k]) if predicted[k] > 0 else None,
            "f1": _num(f1[k]) if (pos > 0 or predicted[k] > 0) else None,
            "auc": auc,
            "support": pos,
            "predicted": int(predicted[k]),
        }

    with np.errstate(invalid="ignore", divide="ignore"):
        row = cm / support[:, None]
        col = cm / predicted[None, :]
    cal = calibration(y, p)
    return jsonable({
        "n": n,
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "mcc": mcc,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
        "confusion_matrix_row_normalized": row,
        "confusion_matrix_col_normalized": col,
        "labels": labels,
        "ece": cal.pop("ece"),
        "calibration": cal,
    })


def frame_metrics(y_true_frames: Any, probs_frames: np.ndarray, labels: Sequence[str]) -> dict:
    """`classification_metrics` with every frame counted as one prediction."""
    return classification_metrics(y_true_frames, probs_frames, labels)


def video_metrics(y_true_frames: Any, probs_frames: np.ndarray, clip_ids: Sequence,
                  labels: Sequence[str], method: str = "mean") -> dict:
    """Clip-level metrics: frames are aggregated per clip (`aggregate_frames`), then
    `classification_metrics` on one prediction per clip. Adds "n_frames" (frames counted)."""
    _, y_clip = clip_labels(y_true_frames, clip_ids, labels)
    _, p_clip = aggregate_frames(probs_frames, clip_ids, method)
    out = classification_metrics(y_clip, p_clip, labels)
    out["n_frames"] = int(np.asarray(probs_frames).shape[0])
    return out


def clip_predictions(y_true_frames: Any, probs_frames: np.ndarray, clip_ids: Sequence,
                     labels: Sequence[str], method: str = "mean",
                     extra: Mapping[str, Sequence] | None = None) -> list[dict]:
    """One row per clip for `predictions.csv`: path (the clip id), label, predicted, p_<class>...,
    n_frames, then each `extra` column (per-frame values, e.g. patient, fold; the clip's first
    frame's value is kept). `y_true_frames` may be None (no labels known): label is then ""."""
    labels = [str(x) for x in labels]
    unique, p_clip = aggregate_frames(probs_frames, clip_ids, method)
    y_clip = clip_labels(y_true_frames, clip_ids, labels)[1] if y_true_frames is not None else None
    ids, first_pos, inverse = _groups(clip_ids)
    n_frames = np.bincount(inverse, minlength=len(first_pos))
    extra_cols = {}
    for col, values in (extra or {}).items():
        v = list(values)
        if len(v) != len(ids):
            raise ValueError(f"extra column {col!r} has {len(v)} values for {len(ids)} frames")
        extra_cols[col] = v
    rows = []
    for j, c in enumerate(unique.tolist()):
        row: dict[str, Any] = {"path": c,
                               "label": labels[int(y_clip[j])] if y_clip is not None else "",
                               "predicted": labels[int(p_clip[j].argmax())]}
        for k, name in enumerate(labels):
            row[f"p_{name}"] = float(p_clip[j, k])
        row["n_frames"] = int(n_frames[j])
        for col, v in extra_cols.items():
            row[col] = jsonable(v[first_pos[j]])
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------- folds

def _stat(values: list) -> dict:
    vals = [v for v in values if v is not None]
    return {"mean": float(np.mean(vals)) if vals else None,
            "std": float(np.std(vals)) if vals else None,
            "values": list(values)}


def fold_summary(per_fold: list[dict]) -> dict:
    """Mean and standard deviation over folds of the scalar metrics and the per-class metrics.

    `per_fold`: `classification_metrics` results, one per fold. Returns
    {"n_folds", "accuracy": {"mean", "std", "values"}, ..., "per_class": {name: {metric: {...}}}}.
    "values" keeps one entry per fold (None where the fold leaves it undefined); mean and std
    skip the None values (std is the population std, numpy's default, ddof=0); both are None
    when no fold defines the metric.
    """
    out: dict[str, Any] = {"n_folds": len(per_fold)}
    for m in SCALAR_METRICS:
        out[m] = _stat([_num(f.get(m)) for f in per_fold])
    names: list[str] = []
    for f in per_fold:
        for name in f.get("labels") or list(f.get("per_class", {})):
            if name not in names:
                names.append(name)
    out["per_class"] = {
        name: {m: _stat([_num(f.get("per_class", {}).get(name, {}).get(m)) for f in per_fold])
               for m in PER_CLASS_METRICS}
        for name in names}
    return jsonable(out)


def evaluation_result(frame_y: Any, frame_probs: np.ndarray, clip_ids: Sequence, labels: Sequence[str], *,
                      folds: Sequence | None = None, method: str = "mean") -> dict:
    """The body of `metrics.json`: {"video": ..., "frame": ..., "aggregation": method}.

    With `folds` (the fold index of each frame, e.g. out-of-fold predictions) the top-level
    "video" / "frame" are pooled over all folds, and "folds" adds {"ids": [...], "video":
    fold_summary, "frame": fold_summary} of the metrics computed fold by fold. A clip whose
    frames fall in different folds is an error (ValueError).
    """
    labels = [str(x) for x in labels]
    p = _check_probs(frame_probs, len(labels))
    ids = list(clip_ids)
    y = _label_indices(frame_y, labels)
    if not (len(ids) == len(y) == p.shape[0]):
        raise ValueError(f"{len(y)} labels, {p.shape[0]} probability rows and {len(ids)} clip ids")
    result: dict[str, Any] = {
        "video": video_metrics(y, p, ids, labels, method),
        "frame": frame_metrics(y, p, labels),
        "aggregation": method,
    }
    if folds is not None:
        f = list(folds)
        if len(f) != len(ids):
            raise ValueError(f"{len(f)} fold indices for {len(ids)} frames")
        clip_fold: dict[Any, Any] = {}
        for c, k in zip(ids, f):
            if clip_fold.setdefault(c, k) != k:
                raise ValueError(f"clip {c!r} has frames in folds {clip_fold[c]!r} and {k!r}")
        fids, fpos, finv = _groups(f)
        order = sorted(range(len(fpos)), key=lambda j: (str(type(fids[fpos[j]])), fids[fpos[j]]))
        fold_ids = [fids[fpos[j]] for j in order]
        per_video, per_frame = [], []
        for j in order:
            m = finv == j
            sub_ids = [c for c, keep in zip(ids, m) if keep]
            per_video.append(video_metrics(y[m], p[m], sub_ids, labels, method))
            per_frame.append(frame_metrics(y[m], p[m], labels))
        result["folds"] = {"ids": jsonable(fold_ids), "video": fold_summary(per_video),
                           "frame": fold_summary(per_frame)}
    return jsonable(result)
