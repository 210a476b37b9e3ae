"""Does another decoding of the severity head agree better with the experts? Out of fold, no retraining.

    python benchmarks/severity_decoding.py runs/mt_k5_wlnone [runs/mt_k5 ...] [--dataset covid-blues]

Reads a run's out-of-fold frame outputs (`RUN/cv/oof_targets.npz`: per frame the severity level
probabilities of every ensemble member) and scores, per video against the experts' severity,
quadratic-weighted kappa and Spearman's rho of:

- `median` (what `analyze` shows: `models.outputs.severity_level` of the clip's mean level
  probabilities);
- a clip score (the mean, max, 75th percentile or top-3 mean of the frames' expected severity)
  cut into levels 0-3 at cutpoints fitted on the OTHER folds' videos only: matched to their level
  frequencies (`quantile`) or chosen to maximise their kappa (`kappa`), then applied to the
  held-out fold; and the plain rounding of the score.

And a ceiling that needs no model: the experts' own finding labels of each video (those known
for every scored video, when there are one or two: on COVID-BLUES B-lines and A-lines yes/no),
each combination mapped to the level that maximises kappa, on the other folds' videos (`experts'
findings, out of fold`) and on all of them (`in sample`, an upper bound). A detector of those
findings as good as the experts gets no further; the same mapping from the model's out-of-fold
findings (clip mean > 0.5) shows how far it gets.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score

from pocovid.models.outputs import severity_level

SCORES = {
    "mean": np.mean,
    "max": np.max,
    "p75": lambda v: np.quantile(v, 0.75),
    "top3": lambda v: np.sort(v)[-3:].mean(),
}


def qwk(y, p) -> float:
    return float(cohen_kappa_score(y, p, weights="quadratic"))


def quantile_cuts(x: np.ndarray, y: np.ndarray, levels: int) -> np.ndarray:
    """Cutpoints that give the training videos' level frequencies."""
    share = np.cumsum(np.bincount(y, minlength=levels))[:-1] / len(y)
    return np.quantile(x, share)


def kappa_cuts(x: np.ndarray, y: np.ndarray, levels: int, sweeps: int = 3) -> np.ndarray:
    """Cutpoints maximising the training videos' kappa: coordinate search over the observed scores,
    from the quantile cutpoints."""
    cuts = quantile_cuts(x, y, levels)
    grid = np.unique(x)
    for _ in range(sweeps):
        for j in range(len(cuts)):
            trial = [(qwk(y, np.digitize(x, np.sort(np.r_[cuts[:j], g, cuts[j + 1:]]))), g) for g in grid]
            cuts[j] = max(trial)[1]
            cuts = np.sort(cuts)
    return cuts


def findings_ceiling(combo: np.ndarray, y: np.ndarray, fold: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Levels predicted from the finding combination `combo` (an int per video) by the mapping,
    combination -> level, with the best kappa: out of fold (fitted on the other folds) and in sample."""
    codes = np.unique(combo)
    idx = np.searchsorted(codes, combo)
    maps = np.array(list(itertools.product(range(levels), repeat=len(codes))))  # levels ** combinations

    def best(sel):
        return maps[int(np.argmax([qwk(y[sel], m[idx[sel]]) for m in maps]))]

    pred = np.zeros_like(y)
    for k in np.unique(fold):
        test = fold == k
        pred[test] = best(~test)[idx[test]]
    return pred, best(np.ones(len(y), bool))[idx]


def decode_run(run: Path, dataset: str) -> list[tuple[str, float, float, np.ndarray]]:
    """(decoding, kappa, rho, predicted level counts) per decoding, over the videos of `dataset`."""
    z = np.load(run / "cv" / "oof_targets.npz", allow_pickle=False)
    probs = z["severity"].mean(1)  # (frames, levels): the ensemble's mean
    levels = probs.shape[1]
    clip_of, truth, fold = z["clip_of"], z["truth_severity"], z["fold"]
    videos = np.where(np.isfinite(truth) & (z["dataset"] == dataset) & np.isin(np.arange(len(truth)), clip_of))[0]
    y = truth[videos].astype(int)
    expected = probs @ np.arange(levels)
    rows = []
    median = np.array([severity_level(probs[clip_of == v].mean(0)) for v in videos])
    rows.append(("median (shown today)", qwk(y, median), spearmanr(median, y).statistic, median))
    for name, fn in SCORES.items():
        x = np.array([fn(expected[clip_of == v]) for v in videos])
        rho = spearmanr(x, y).statistic
        for how, fit in (("quantile", quantile_cuts), ("kappa", kappa_cuts)):
            pred = np.zeros_like(y)
            for k in np.unique(fold[videos]):
                test = fold[videos] == k
                pred[test] = np.digitize(x[test], fit(x[~test], y[~test], levels))
            rows.append((f"{name}, {how} cutpoints", qwk(y, pred), rho, pred))
        rounded = np.clip(np.rint(x), 0, levels - 1).astype(int)
        rows.append((f"{name}, rounded", qwk(y, rounded), rho, rounded))
    known = z["truth_findings"][videos]
    cols = np.isfinite(known).all(0)
    if 0 < cols.sum() <= 2:  # every mapping is tried: 4 ** (2 ** findings) of them, 256 for two
        combo = (known[:, cols] > 0.5) @ (1 << np.arange(cols.sum()))
        names = "+".join(str(n) for n in z["finding_names"][cols])
        for how, pred in zip(("out of fold", "in sample"), findings_ceiling(combo, y, fold[videos], levels)):
            rows.append((f"experts' {names}, {how}", qwk(y, pred), spearmanr(pred, y).statistic, pred))
        # the same route from the model's out-of-fold findings (clip mean of the ensemble's mean > 0.5)
        seen = np.array([z["findings"][clip_of == v].mean((0, 1)) for v in videos])[:, cols]
        pred = findings_ceiling((seen > 0.5) @ (1 << np.arange(cols.sum())), y, fold[videos], levels)[0]
        rows.append((f"model's {names}, out of fold", qwk(y, pred), spearmanr(pred, y).statistic, pred))
    return [(n, k, r, np.bincount(p, minlength=levels)) for n, k, r, p in rows], np.bincount(y, minlength=levels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="training run folders (with cv/oof_targets.npz)")
    ap.add_argument("--dataset", default="covid-blues", help="whose videos to score (default covid-blues)")
    args = ap.parse_args()
    for run in args.runs:
        rows, counts = decode_run(run, args.dataset)
        print(f"{run}: {counts.sum()} {args.dataset} videos, experts' levels 0-3: {counts.tolist()}")
        print(f"  {'decoding':38s} {'kappa':>6s} {'rho':>6s}  predicted levels")
        for name, k, r, pred in rows:
            print(f"  {name:38s} {k:6.3f} {r:6.3f}  {pred.tolist()}")


if __name__ == "__main__":
    main()
