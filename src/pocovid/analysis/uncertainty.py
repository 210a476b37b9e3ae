"""How much to trust one clip's diagnosis: the disagreement of the model's ensemble members.

The model is an ensemble of `M` heads on one frozen trunk (`model.forward_members` -> (B, M, C)
logits). For a clip of N frames the members' probabilities are `members` (N, M, C). Scores
(higher = less trustworthy), every one a mean over frames or over a clip, so they do not depend on
how many frames were sampled:

    entropy      entropy of the ensemble's clip probabilities (nats; the DEFAULT). With q_m the
                 clip probabilities of member m, H(mean_m q_m) = BALD + mean_m H(q_m): the members'
                 disagreement plus the uncertainty each member admits to.
    bald         mutual information (BALD) between the clip prediction and the member: entropy of
                 the mean of the members' clip probabilities minus the mean of their entropies (nats)
                 -- disagreement alone
    member_std   mean over frames of the members' standard deviation of the probability of the
                 clip's predicted class -- disagreement alone
    frame_bald   mean over frames of each frame's mutual information
    margin       1 - (top clip probability - second), for comparison

Why entropy: on the out-of-fold predictions of three real-data cross-validation runs (101 clips,
5 members each; benchmarks/uncertainty.py), flagging the 25% most uncertain clips lifts accuracy
on the rest to 89.5% in all three with entropy (from 81.2 / 82.2 / 84.2%), to 84.2 / 89.5 / 86.8%
with member_std and 84.2 / 88.2 / 86.8% with bald. The heads share one frozen trunk, so their
disagreement alone misses errors they make together; it is reported next to the score
(`uncertainty.components` of result.json).

`review_recommended` compares the score with a threshold chosen on out-of-fold predictions of the
training run (`uncertainty_threshold_from_oof`); model files carry it in
`meta["extra"]["uncertainty"] = {"method": ..., "threshold": ...}` and `threshold_of(model)`
reads it, falling back to `DEFAULT_UNCERTAINTY`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

METHODS = ("member_std", "bald", "frame_bald", "entropy", "margin")
DEFAULT_METHOD = "entropy"
DEFAULT_FLAG_RATE = 0.25  # share of (out-of-fold) clips the threshold sends to review
#: Used when a model file carries no threshold: the rule below on the out-of-fold predictions of
#: three real-data cross-validation runs gave 0.836, 0.852 and 0.857 (benchmarks/uncertainty.py).
DEFAULT_UNCERTAINTY = {"method": DEFAULT_METHOD, "threshold": 0.85,
                       "source": "pocovid default (real-data cross-validation, 101 clips, 25% flagged)"}

_EPS = 1e-12


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0)
    return -(p * np.log(p)).sum(axis)


def clip_uncertainty(members: np.ndarray, method: str = DEFAULT_METHOD, predicted: int | None = None) -> float:
    """Uncertainty of one clip from its members' frame probabilities `members` (N, M, C).

    `predicted` is the clip's class (default: argmax of the mean of the frame probabilities)."""
    m = np.asarray(members, np.float64)
    if m.ndim == 2:  # (M, C): one frame
        m = m[None]
    if m.ndim != 3 or m.shape[0] == 0:
        raise ValueError(f"members must be (frames, members, classes), got {np.shape(members)}")
    clip_p = m.mean((0, 1))
    c = int(np.argmax(clip_p)) if predicted is None else int(predicted)
    if method == "member_std":
        return float(m[:, :, c].std(axis=1).mean())
    if method == "bald":
        q = m.mean(0)  # (M, C): each member's clip probabilities
        return float(max(_entropy(q.mean(0)) - _entropy(q).mean(), 0.0))
    if method == "frame_bald":
        return float(np.maximum(_entropy(m.mean(1)) - _entropy(m).mean(1), 0.0).mean())
    if method == "entropy":
        return float(_entropy(clip_p))
    if method == "margin":
        s = np.sort(clip_p)[::-1]
        return float(1.0 - (s[0] - (s[1] if len(s) > 1 else 0.0)))
    raise ValueError(f"unknown uncertainty method {method!r} (known: {', '.join(METHODS)})")


def frame_uncertainty(members: np.ndarray, predicted: int) -> np.ndarray:
    """(N,) members' std of the predicted class's probability, per frame (for the timeline)."""
    return np.asarray(members, np.float64)[:, :, int(predicted)].std(axis=1)


def threshold_of(model) -> dict:
    """{"method", "threshold", "source"} for `model`: from its file's metadata
    (`meta["extra"]["uncertainty"]`) when present and valid, else `DEFAULT_UNCERTAINTY`."""
    extra = (getattr(model, "meta", None) or {}).get("extra") or {}
    u = extra.get("uncertainty") if isinstance(extra, dict) else None
    if isinstance(u, dict) and u.get("method") in METHODS:
        try:
            return {"method": str(u["method"]), "threshold": float(u["threshold"]), "source": "model file"}
        except (KeyError, TypeError, ValueError):
            pass
    return dict(DEFAULT_UNCERTAINTY)


# ------------------------------------------------------------------------------------------ OOF
def load_oof(path: str | os.PathLike) -> dict:
    """`RUN/cv/oof_members.npz` (or a RUN folder) as a dict of arrays (see `pocovid train`)."""
    p = Path(path)
    if p.is_dir():
        p = p / "cv" / "oof_members.npz" if (p / "cv" / "oof_members.npz").exists() else p / "oof_members.npz"
    if not p.is_file():
        from pocovid.errors import PocovidError

        raise PocovidError(f"{p}: no out-of-fold predictions (written by `pocovid train` with cross-validation)")
    d = np.load(p, allow_pickle=False)
    return {k: d[k] for k in d.files} | {"file": str(p)}


def oof_clip_table(oof: dict, method: str = DEFAULT_METHOD) -> dict:
    """Per clip of the out-of-fold predictions: label, predicted class, correctness, score."""
    members, clip_of, y = oof["members"], oof["clip_of"], oof["y"]
    keep = ~np.isnan(members).any(axis=(1, 2))
    ids = np.unique(clip_of[keep])
    label, pred, score = [], [], []
    for ci in ids:
        sel = keep & (clip_of == ci)
        mm = members[sel]
        p = mm.mean((0, 1))
        label.append(int(y[sel][0]))
        pred.append(int(np.argmax(p)))
        score.append(clip_uncertainty(mm, method))
    label, pred, score = np.array(label), np.array(pred), np.array(score)
    return {"clip": ids, "label": label, "pred": pred, "correct": label == pred, "score": score}


def choose_threshold(scores: np.ndarray, flag_rate: float = DEFAULT_FLAG_RATE) -> float:
    """The rule: flag the `flag_rate` most uncertain clips, i.e. threshold = the (1 - flag_rate)
    quantile of the out-of-fold scores; a clip is flagged when its score is >= the threshold."""
    s = np.sort(np.asarray(scores, np.float64))
    if len(s) == 0:
        raise ValueError("no scores")
    k = int(np.clip(np.ceil(len(s) * (1.0 - flag_rate)), 0, len(s) - 1))
    return float(s[k])


def selective_figures(correct: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    flagged = scores >= threshold
    acc = lambda m: float(correct[m].mean()) if m.any() else float("nan")  # noqa: E731
    # area under the risk-coverage curve (lower is better): error rate kept as clips are added by score
    order = np.argsort(scores, kind="stable")
    risk = np.cumsum(~correct[order]) / np.arange(1, len(order) + 1)
    return {"n_clips": int(len(correct)), "flag_rate": float(flagged.mean()),
            "accuracy_all": acc(np.ones_like(flagged)),
            "accuracy_unflagged": acc(~flagged), "accuracy_flagged": acc(flagged), "aurc": float(risk.mean())}


def uncertainty_threshold_from_oof(path: str | os.PathLike, method: str = DEFAULT_METHOD,
                                   flag_rate: float = DEFAULT_FLAG_RATE) -> dict:
    """The uncertainty threshold for a model file, from its run's out-of-fold predictions.

    `path`: `RUN/cv/oof_members.npz` or the RUN folder. Returns plain data to store as
    `extra["uncertainty"]` of the model file: {"method", "threshold", "flag_rate_target",
    "flag_rate", "accuracy_all", "accuracy_unflagged", "accuracy_flagged", "aurc", "n_clips", "rule"}.
    """
    if method not in METHODS:
        raise ValueError(f"unknown uncertainty method {method!r} (known: {', '.join(METHODS)})")
    t = oof_clip_table(load_oof(path), method)
    thr = choose_threshold(t["score"], flag_rate)
    out = {"method": method, "threshold": thr, "flag_rate_target": float(flag_rate)}
    out |= selective_figures(t["correct"], t["score"], thr)
    out["rule"] = (f"flag a clip when its {method} score >= the {1 - flag_rate:.0%} quantile of the "
                   f"out-of-fold clip scores")
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in out.items()}
