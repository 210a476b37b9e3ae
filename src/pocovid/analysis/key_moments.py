"""Where in a clip the evidence lies: key moments (peaks of each class the frames support, apart
in time) and runs of frames that favour another class ("frames disagree")."""

from __future__ import annotations

import numpy as np

MIN_GAP_S = 0.5
DISAGREE_MIN_SHARE = 0.10  # a run of frames favouring another class counts from this share of the clip
DISAGREE_MIN_FRAMES = 2  # ... and this many frames
SMOOTH_S = 0.25  # frame probabilities are averaged over +-this many seconds before runs are found
KEY_MIN_RELATIVE = 0.5  # a key moment's probability of its class is at least this share of the class's peak


def min_gap_s(duration_s: float, k: int) -> float:
    """Key moments lie at least max(0.5 s, duration / (2K)) apart."""
    return max(MIN_GAP_S, float(duration_s) / (2 * max(int(k), 1)))


def select_key_moments(times: np.ndarray, evidence: np.ndarray, k: int = 3, min_gap: float | None = None,
                       duration_s: float | None = None, eligible: np.ndarray | None = None) -> list[int]:
    """Indices (into `times`) of up to `k` moments where `evidence` peaks, greedily highest first,
    each at least `min_gap` seconds from those already taken (non-maximum suppression).

    Ties go to the earlier frame. Only frames where `eligible` is True are taken (e.g. frames
    that do show the class); fewer than `k` when the clip is too short for `k` moments apart."""
    times = np.asarray(times, np.float64)
    ev = np.asarray(evidence, np.float64)
    if len(times) == 0 or k <= 0:
        return []
    if min_gap is None:
        dur = duration_s if duration_s is not None else float(times[-1] - times[0])
        min_gap = min_gap_s(dur, k)
    order = np.lexsort((np.arange(len(ev)), -ev))  # highest evidence first, then earliest
    chosen: list[int] = []
    for i in order:
        if eligible is not None and not eligible[i]:
            continue
        if all(abs(times[i] - times[j]) >= min_gap - 1e-9 for j in chosen):
            chosen.append(int(i))
            if len(chosen) == k:
                break
    return chosen


def evidence_of(members_logp: np.ndarray, predicted: int) -> np.ndarray:
    """Evidence for class `predicted` per frame: the log-odds of the ensemble's mean probability,
    log p - log(1 - p), from the members' log-probabilities (N, M, C). Monotone in the probability
    but does not saturate at 1.0, so the clearest frames are still told apart."""
    lp = np.asarray(members_logp, np.float64)
    m = lp.shape[1]
    log_p = np.logaddexp.reduce(lp[:, :, predicted], axis=1) - np.log(m)
    others = np.delete(lp, predicted, axis=2)
    log_q = np.logaddexp.reduce(others.reshape(len(lp), -1), axis=1) - np.log(m)
    return log_p - log_q


def supported_classes(times: np.ndarray, probs: np.ndarray, predicted: int, min_share: float = DISAGREE_MIN_SHARE,
                      min_frames: int = DISAGREE_MIN_FRAMES) -> dict[int, np.ndarray]:
    """The classes the frames support besides `predicted`, strongest first: {class: frames that
    favour it (bool (N,))}. A class is supported when it wins a run of consecutive (lightly
    smoothed) frames, or frames in all, of at least `min_share` of the clip and `min_frames`."""
    times, probs = np.asarray(times, np.float64), np.asarray(probs, np.float64)
    n = len(times)
    if n == 0:
        return {}
    top, win = smooth_probabilities(times, probs).argmax(1), probs.argmax(1)
    need = max(int(min_frames), int(np.ceil(min_share * n - 1e-9)))
    out = {}
    for c in range(probs.shape[1]):
        if c == int(predicted):
            continue
        favours = (top == c) | (win == c)
        longest, run = 0, 0
        for t in top == c:
            run = run + 1 if t else 0
            longest = max(longest, run)
        if longest >= need or int((win == c).sum()) >= need:
            out[c] = favours
    return dict(sorted(out.items(), key=lambda kv: -int(kv[1].sum())))


def class_key_moments(times: np.ndarray, probs: np.ndarray, members_logp: np.ndarray, predicted: int, k: int = 3,
                      min_gap: float | None = None, min_share: float = DISAGREE_MIN_SHARE,
                      min_frames: int = DISAGREE_MIN_FRAMES) -> list[tuple[int, int]]:
    """Key moments of every class the frames support: [(frame, class)], the predicted class's first
    (strongest first), then one for each other supported class (`supported_classes`, strongest
    first), each with the frames that show it most clearly.

    `k` moments in all: one for each supported class (the strongest `k` - 1 of them), the rest for
    the predicted class; a clip whose middle third shows pneumonia gets a pneumonia moment whatever
    the clip's class (from `k` = 2; the default 3 covers every class of a three-class model). Moments lie at least
    `min_gap` s apart (`select_key_moments`; default `min_gap_s`), except where a class's frames
    lie only closer to another class's moments (its moment is then closer); a frame serves one moment. Evidence is the
    log-odds of the class (`evidence_of`); only frames whose probability of the class is at least
    `KEY_MIN_RELATIVE` of its peak there qualify."""
    times, probs = np.asarray(times, np.float64), np.asarray(probs, np.float64)
    if len(times) == 0 or k <= 0:
        return []
    others = list(supported_classes(times, probs, predicted, min_share, min_frames).items())[:int(k) - 1]
    plan = [(int(predicted), int(k) - len(others), np.ones(len(times), bool))] + [(c, 1, f) for c, f in others]
    if min_gap is None:
        min_gap = min_gap_s(float(times[-1] - times[0]), k)
    out: list[tuple[int, int]] = []
    for c, n, favours in plan:
        p = np.where(favours, probs[:, c], 0.0)
        eligible = favours & (p >= KEY_MIN_RELATIVE * p.max()) & (p > 0)
        taken = [i for i, _ in out]
        eligible[taken] = False
        apart = eligible.copy()  # apart from the other classes' moments too, where the class has frames so
        for i in taken:
            apart &= np.abs(times - times[i]) >= min_gap - 1e-9
        ev = evidence_of(members_logp, c)
        chosen = select_key_moments(times, ev, n, min_gap=min_gap, eligible=apart)
        if not chosen:
            chosen = select_key_moments(times, ev, n, min_gap=min_gap, eligible=eligible)
        out += [(i, c) for i in chosen]
    return out


def smooth_probabilities(times: np.ndarray, probs: np.ndarray, half_window_s: float = SMOOTH_S) -> np.ndarray:
    """Mean of the frame probabilities within +-half_window_s of each frame (the frame itself at least)."""
    times = np.asarray(times, np.float64)
    probs = np.asarray(probs, np.float64)
    if len(times) < 3 or half_window_s <= 0:
        return probs.copy()
    lo = np.searchsorted(times, times - half_window_s - 1e-9, side="left")
    hi = np.searchsorted(times, times + half_window_s + 1e-9, side="right")
    cs = np.vstack([np.zeros((1, probs.shape[1])), np.cumsum(probs, 0)])
    return (cs[hi] - cs[lo]) / (hi - lo)[:, None]


def disagreement(times: np.ndarray, probs: np.ndarray, predicted: int, classes: list[str],
                 min_share: float = DISAGREE_MIN_SHARE, min_frames: int = DISAGREE_MIN_FRAMES) -> dict:
    """Runs of consecutive frames whose (lightly smoothed) most likely class is not the clip's.

    Returns {"frames_disagree": bool, "segments": [...], "class_share": {class: share of frames
    it wins}}; a segment is {"label", "start_s", "end_s", "n_frames", "share", "mean_probability"};
    the flag is raised when a run covers at least `min_share` of the frames and `min_frames` frames."""
    times = np.asarray(times, np.float64)
    probs = np.asarray(probs, np.float64)
    n = len(times)
    win = probs.argmax(1) if n else np.zeros(0, int)
    share = {c: float(np.mean(win == i)) if n else 0.0 for i, c in enumerate(classes)}
    sm = smooth_probabilities(times, probs)
    top = sm.argmax(1) if n else np.zeros(0, int)
    segments = []
    i = 0
    while i < n:
        j = i
        while j + 1 < n and top[j + 1] == top[i]:
            j += 1
        c = int(top[i])
        if c != int(predicted):
            length = j - i + 1
            segments.append({"label": classes[c], "start_s": round(float(times[i]), 3),
                             "end_s": round(float(times[j]), 3), "n_frames": int(length),
                             "share": round(length / n, 4),
                             "mean_probability": round(float(probs[i:j + 1, c].mean()), 4),
                             "sizeable": bool(length >= min_frames and length / n >= min_share)})
        i = j + 1
    return {"frames_disagree": any(s["sizeable"] for s in segments), "segments": segments, "class_share": share}
