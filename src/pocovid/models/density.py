"""Where a model's training frames lie in its pooled trunk-feature space: a Gaussian (Ledoit-Wolf
shrinkage) saved in the model file (`meta["extra"]["feature_density"]`). A new frame far from it
(Mahalanobis distance) is unlike anything the model was trained on: the out-of-distribution guard
reads it (`pocovid.analysis.ood`).

    record = fit_feature_density(pooled)      # (N, K) pooled trunk features of the training frames
    density = FeatureDensity.of(model)        # None when the model file carries none
    d2 = density.d2(pooled_of_new_frames)
"""

from __future__ import annotations

import numpy as np

QUANTILES = (("q50", 50), ("q95", 95), ("q99", 99), ("q999", 99.9))


def fit_feature_density(pooled: np.ndarray) -> dict:
    """The `feature_density` record of a model file from pooled trunk features (N, K)."""
    from sklearn.covariance import LedoitWolf  # scikit-learn is slow to import: only when fitting

    pooled = np.asarray(pooled, np.float32)
    lw = LedoitWolf().fit(pooled)
    d2 = lw.mahalanobis(pooled)
    import torch  # the model file stores tensors

    return {"mean": torch.from_numpy(lw.location_.astype(np.float32)),
            "precision": torch.from_numpy(lw.precision_.astype(np.float32)),
            "d2_train": {name: float(np.percentile(d2, p)) for name, p in QUANTILES}, "n": int(len(pooled))}


class FeatureDensity:
    """The Gaussian of the training frames' pooled trunk features, ready to score new frames."""

    def __init__(self, d: dict):
        # numpy: a tensor (the model file) or a list (a model run from its cached graph, no torch)
        self.mean = np.asarray(d["mean"], np.float32)
        self.precision = np.asarray(d["precision"], np.float32)
        self.q = {k: float(v) for k, v in (d.get("d2_train") or {}).items()}
        self.n = int(d.get("n", 0))

    @classmethod
    def of(cls, model) -> "FeatureDensity | None":
        extra = (getattr(model, "meta", None) or {}).get("extra") or {}
        d = extra.get("feature_density") if isinstance(extra, dict) else None
        if not isinstance(d, dict) or "mean" not in d or "precision" not in d:
            return None
        fd = cls(d)
        return fd if fd.q.get("q999") and fd.mean.size == fd.precision.shape[0] else None

    def d2(self, pooled) -> np.ndarray:
        """Squared Mahalanobis distance of each row of `pooled` (N, K) to the training frames."""
        x = np.asarray(pooled.detach().cpu() if hasattr(pooled, "detach") else pooled, np.float32) - self.mean
        return ((x @ self.precision) * x).sum(1)
