"""PNG plots of evaluation results: confusion matrices, ROC curves, reliability diagram.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas: no display, no pyplot state.
Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pocovid.evaluation.metrics import _check_probs, _label_indices, calibration

_DPI = 120


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def _matrix(rows: Sequence[Sequence[Any]]) -> np.ndarray:
    return np.array([[np.nan if v is None else float(v) for v in r] for r in rows], dtype=float)


def _fmt(v: float, as_int: bool) -> str:
    if not np.isfinite(v):
        return "–"
    return f"{int(round(v))}" if as_int else f"{v:.2f}"


def plot_confusion_matrices(metrics: Mapping, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Three panels from a `classification_metrics` result: counts, row-normalised (recall: each
    true class sums to 1) and column-normalised (precision: each predicted class sums to 1).
    Rows are the true class, columns the predicted class; every cell is annotated."""
    labels = list(metrics["labels"])
    k = len(labels)
    panels = [
        ("counts", _matrix(metrics["confusion_matrix"]), True),
        ("row-normalised (recall)", _matrix(metrics["confusion_matrix_row_normalized"]), False),
        ("column-normalised (precision)", _matrix(metrics["confusion_matrix_col_normalized"]), False),
    ]
    side = max(3.2, 0.9 * k + 1.6)
    fig = Figure(figsize=(3 * side + 0.6, side + 0.5))
    axes = fig.subplots(1, 3)
    for ax, (name, m, as_int) in zip(axes, panels):
        shown = m / np.nanmax(m) if as_int and np.nanmax(m) > 0 else m
        shown = np.where(np.isfinite(shown), shown, 0.0)
        ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(k):
            for j in range(k):
                dark = shown[i, j] > 0.55
                ax.text(j, i, _fmt(m[i, j], as_int), ha="center", va="center", fontsize=11,
                        color="white" if dark else "black", fontweight="bold" if i == j else "normal")
        ax.set_xticks(range(k), labels, rotation=30, ha="right")
        ax.set_yticks(range(k), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name, fontsize=11)
    n = metrics.get("n")
    acc = metrics.get("accuracy")
    head = title or "Confusion matrix"
    extra = []
    if n is not None:
        extra.append(f"n = {n}")
    if acc is not None:
        extra.append(f"accuracy = {acc:.3f}")
    if metrics.get("balanced_accuracy") is not None:
        extra.append(f"balanced accuracy = {metrics['balanced_accuracy']:.3f}")
    fig.suptitle(head + (" (" + ", ".join(extra) + ")" if extra else ""), fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def plot_roc(y_true: Any, probs: Any, labels: Sequence[str], path: str | os.PathLike, *,
             title: str | None = None) -> Path:
    """One-vs-rest ROC curve of each class, AUC in the legend. A class without both positives and
    negatives has no curve (the legend says so)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = [str(x) for x in labels]
    p = _check_probs(probs, len(labels))
    y = _label_indices(y_true, labels)
    fig = Figure(figsize=(5.6, 5.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    for k, name in enumerate(labels):
        pos = y == k
        if pos.all() or not pos.any():
            why = "no negatives" if pos.any() else "no positives"
            ax.plot([], [], color=f"C{k}", label=f"{name}: no curve ({why})")
            continue
        fpr, tpr, _ = roc_curve(pos.astype(int), p[:, k])
        auc = roc_auc_score(pos.astype(int), p[:, k])
        ax.plot(fpr, tpr, color=f"C{k}", linewidth=2, label=f"{name} (AUC = {auc:.3f}, n+ = {int(pos.sum())})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title or f"ROC, one class vs rest (n = {len(y)})", fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(source: Mapping | tuple, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Reliability diagram: accuracy against mean top-label confidence per confidence bin, with
    the number of predictions in each bin under it and the ECE in the title.

    `source`: a `classification_metrics` result (its "calibration" and "ece"), or a tuple
    `(y_true, probs)`."""
    if isinstance(source, Mapping):
        cal = dict(source["calibration"])
        ece = source.get("ece")
    else:
        y_true, probs = source
        p = _check_probs(probs)
        y = _label_indices(y_true, [str(i) for i in range(p.shape[1])])
        cal = calibration(y, p)
        ece = cal.pop("ece")
    edges = np.asarray(cal["bin_edges"], dtype=float)
    counts = np.asarray(cal["bin_count"], dtype=int)
    acc = np.array([np.nan if v is None else v for v in cal["bin_accuracy"]], dtype=float)
    conf = np.array([np.nan if v is None else v for v in cal["bin_confidence"]], dtype=float)
    width = np.diff(edges)
    left = edges[:-1]

    fig = Figure(figsize=(5.6, 6.4))
    ax, axc = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="perfect calibration")
    has = counts > 0
    ax.bar(left[has], np.nan_to_num(acc[has]), width=width[has], align="edge", color="C0",
           edgecolor="black", alpha=0.8, label="accuracy")
    gap_lo = np.minimum(acc, conf)
    ax.bar(left[has], np.abs(acc - conf)[has], bottom=gap_lo[has], width=width[has], align="edge",
           facecolor="none", hatch="///", edgecolor="C3", linewidth=1.2, label="gap: |accuracy − confidence|")
    ax.hlines(conf[has], left[has], (left + width)[has], colors="black", linewidth=2,
              label="mean confidence in bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    ece_txt = "ECE = –" if ece is None else f"ECE = {ece:.3f}"
    ax.set_title(f"{title or 'Reliability diagram'} ({ece_txt}, n = {int(counts.sum())})", fontsize=12)

    axc.bar(left, counts, width=width, align="edge", color="0.6", edgecolor="black")
    top = max(int(counts.max()) if counts.size else 0, 1)
    for x, c in zip(left + width / 2, counts):
        if c:
            axc.text(x, c + 0.03 * top, str(int(c)), ha="center", va="bottom", fontsize=8)
    axc.set_ylim(0, top * 1.3)
    axc.set_xlabel("confidence (top-label probability)")
    axc.set_ylabel("count")
    axc.set_xticks(edges)
    axc.set_xticklabels([f"{e:.1f}" for e in edges], fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
