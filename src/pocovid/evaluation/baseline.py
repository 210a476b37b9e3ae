"""The reference every model is measured against: a linear probe (logistic regression) on frozen
features, out of fold on the same folds (benchmarks/train_cv.py, benchmarks/cross_site.py).

    X = pooled_features(np.load("RUN/cache/trunk-KEY.npy", mmap_mode="r"))   # (N, C): clean copy, pooled
    probs = logistic_oof(X, y, folds, n_classes=3)                             # y = -1: not trained on

Pure numpy / scikit-learn (no torch).
"""

from __future__ import annotations

import warnings

import numpy as np


def pooled_features(feats: np.ndarray, copy: int = 0, chunk: int = 512) -> np.ndarray:
    """(N, C) float32 global average of cached trunk maps `feats` ((copies, N, C, h, w), the training
    cache's layout, memory-mapped or not: read `chunk` frames at a time) or (N, C, h, w); `copy` 0
    is the clean (not augmented) copy."""
    f = feats[copy] if feats.ndim == 5 else feats
    if f.ndim == 2:
        return np.asarray(f, np.float32)
    return np.concatenate([np.asarray(f[i:i + chunk], np.float32).mean(axis=(2, 3))
                           for i in range(0, len(f), chunk)]) if len(f) else np.zeros((0, f.shape[1]), np.float32)


def logistic_oof(X: np.ndarray, y: np.ndarray, folds: np.ndarray, n_classes: int, *, C: float = 1.0,
                 class_weight: str | None = "balanced", max_iter: int = 3000) -> np.ndarray:
    """Out-of-fold probabilities (N, n_classes) of a standardised logistic regression fitted per fold.

    `y`: class index per row, -1 (or NaN) where the row is not trained on (it is still predicted);
    `folds`: fold of each row. For fold k the model is fitted on the other folds' labelled rows and
    predicts every row of fold k. A class absent from the training rows gets probability 0; with a
    single class in them every row of the fold predicts it (probability 1). Rows of a fold that has
    no training rows at all are NaN."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, np.float64)
    yf = np.asarray(y, np.float64)
    known = np.isfinite(yf) & (yf >= 0)
    yi = np.where(known, yf, -1).astype(int)
    folds = np.asarray(folds)
    out = np.full((len(X), n_classes), np.nan)
    for k in np.unique(folds):
        te = folds == k
        tr = (folds != k) & known
        present = np.unique(yi[tr])
        if len(present) == 0:
            continue
        out[te] = 0.0
        if len(present) == 1:
            out[te, present[0]] = 1.0
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, class_weight=class_weight))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence on tiny folds
            clf.fit(X[tr], yi[tr])
        out[np.ix_(te, clf.classes_)] = clf.predict_proba(X[te])
    return out
