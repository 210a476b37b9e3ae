"""Patient-level cross-validation and the final model.

    result = train_run(splits, out_dir, TrainConfig(), final=True)

One run: frames are extracted once; the frozen trunk's outputs are cached once (clean and
augmented copies); then for every fold an ensemble of small heads is trained on the other folds
(early stopping on an inner split of *their* patients, never the test fold) and predicts the test
fold. Out-of-fold predictions give the honest figures. `final` trains the same ensemble on all data.
Every step writes its result to `out_dir`, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pocovid import __version__
from pocovid.data.splits import Splits
from pocovid.errors import PocovidError
from pocovid.files import atomic_path, write_json
from pocovid.training.config import TrainConfig, fingerprint
from pocovid.training.fit import fit_head, inner_split, predict_head
from pocovid.training.frames import FrameSet, extract_frames, trunk_features


@dataclass
class RunResult:
    out_dir: Path
    metrics: dict | None
    model_path: Path | None
    frames: FrameSet
    oof_probs: np.ndarray | None  # (N frames, C) ensemble mean
    timings: dict


def build_model(cfg: TrainConfig, pretrained: bool = True, weights: str | None = None):
    from pocovid.models import create_model

    model = create_model(cfg.backbone, list(cfg.classes), cut=cfg.cut, n_frozen=cfg.n_frozen,
                         adapter_channels=cfg.adapter_channels, dropout=cfg.dropout,
                         spatial_dropout=cfg.spatial_dropout, n_heads=cfg.n_heads,
                         pretrained=pretrained, weights=weights)
    model.training_config = cfg.to_dict()  # what the model sees follows the config (model.input_config)
    return model


def _clips_of(splits: Splits, cfg: TrainConfig, roots: dict | None = None) -> list[dict]:
    """The clips to train on. With several datasets (`roots`: dataset -> folder) each clip's `path` is
    the file's full path and `dataset` / `rel` say which recording it is wherever the data lies."""
    clips = []
    for k, fold in enumerate(splits.folds):
        for it in fold:
            if it.label in cfg.classes and (cfg.probe is None or it.probe == cfg.probe):
                c = {"path": it.path, "label": it.label, "patient": it.patient, "fold": k,
                     "kind": it.kind, "probe": it.probe}
                if roots is not None:
                    c.update(path=str(splits.abspath(it, roots)), dataset=it.dataset, rel=it.path)
                clips.append(c)
    return clips


def _roots_of(splits: Splits, root) -> dict | None:
    """dataset -> folder when the split holds several datasets (None for one: paths stay relative)."""
    if len(splits.datasets()) <= 1 and not isinstance(root, dict):
        return None
    roots = {k: str(v) for k, v in (root if isinstance(root, dict) else splits.roots).items()}
    if root is not None and not isinstance(root, dict):
        raise PocovidError(f"the split file holds {len(splits.datasets())} datasets "
                           f"({', '.join(splits.datasets())}): give one folder per dataset")
    missing = [ds for ds in splits.datasets() if ds not in roots]
    if missing:
        raise PocovidError(f"no folder for dataset(s) {', '.join(missing)} of the split file")
    return roots


def data_fingerprint(frames: FrameSet) -> str:
    """Which recordings (paths, labels, patients, frame counts) a model saw; with several datasets a
    recording is `dataset:path` (wherever its folder lies)."""
    return fingerprint([(f"{c['dataset']}:{c['rel']}" if "rel" in c else c["path"], c["label"], c["patient"],
                         c["n_frames"]) for c in frames.clips])


def prepare(splits: Splits, out_dir: Path, cfg: TrainConfig, model, root=None, progress=True):
    """Frames and trunk features, from the run's cache when it matches the config."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir / "cache"
    cache.mkdir(exist_ok=True)
    size = cfg.size or model.input_size
    roots = _roots_of(splits, root)
    root = None if roots is not None else root if root is not None else splits.root
    clips = _clips_of(splits, cfg, roots)
    if not clips:
        raise PocovidError(f"no recordings of classes {','.join(cfg.classes)}"
                           f"{' and probe ' + cfg.probe if cfg.probe else ''} in the split file")
    fkey = fingerprint(cfg.frames_key() | {"size": size, "clips": clips, "root": str(root)}
                       | ({"roots": roots} if roots is not None else {}))
    fpath = cache / f"frames-{fkey}.npz"
    if fpath.exists():
        frames = FrameSet.load(fpath)
    else:
        frames = extract_frames(clips, root, list(cfg.classes), model.input_config, progress=progress)
        frames.save(fpath)
    present = {c["label"] for c in frames.clips}
    missing = [c for c in cfg.classes if c not in present]
    if missing:
        raise PocovidError(f"no readable recording of class(es) {', '.join(missing)}: cannot train on them")
    tkey = fingerprint(cfg.trunk_key() | {"frames": fkey})
    tpath = cache / f"trunk-{tkey}.npy"
    if tpath.exists():
        feats = np.load(tpath, mmap_mode="r")
    else:
        feats = trunk_features(model, frames.frames, cfg.n_aug, cfg.augment, cfg.seed, progress=progress, out=tpath)
    return frames, feats


def _train_ensemble(model, feats, frames: FrameSet, clip_idx: np.ndarray, cfg: TrainConfig, seed: int,
                    desc: str, progress: bool) -> list[dict]:
    """Train every head of `model` on the frames of clips `clip_idx`; each head holds out its own
    share of those patients for early stopping. Returns one record per head."""
    y = frames.y
    patients = np.array([frames.clips[i]["patient"] for i in clip_idx])
    labels = np.array([frames.clips[i]["label"] for i in clip_idx])
    records = []
    bar = tqdm(total=len(model.heads) * cfg.epochs, desc=desc, unit="epoch", disable=not progress, leave=False)
    for m, head in enumerate(model.heads):
        s = seed * 100 + m
        tr_c, va_c = inner_split(patients, labels, cfg.val_fraction, s)
        tr = np.flatnonzero(np.isin(frames.clip_of, clip_idx[tr_c]))
        va = np.flatnonzero(np.isin(frames.clip_of, clip_idx[va_c]))

        def tick(rec, _bar=bar):
            _bar.update(1)
            _bar.set_postfix({k: round(v, 3) for k, v in rec.items() if k != "epoch"})

        init = copy.deepcopy(head.state_dict())
        kw = dict(patience=cfg.patience, lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                  label_smoothing=cfg.label_smoothing, seed=s)
        r = fit_head(head, feats, y, tr, va, epochs=cfg.epochs, on_epoch=tick, **kw)
        bar.update(cfg.epochs - len(r.history))
        rec = {"head": m, "best_epoch": r.best_epoch, "best_val_loss": r.best_val_loss,
               "n_train_frames": int(len(tr)), "n_val_frames": int(len(va)), "epochs_run": len(r.history)}
        if cfg.refit and len(va):
            # The held-out patients chose the epoch count; now learn from them too (a fifth of
            # the patients of a small class is too much to leave out of the model).
            head.load_state_dict(init)
            everything = np.concatenate([tr, va])
            fit_head(head, feats, y, everything, np.array([], int), epochs=r.best_epoch, **kw)
            rec["refit_frames"] = int(len(everything))
        records.append(rec)
    bar.close()
    return records


def _ensemble_probs(model, feats, idx: np.ndarray) -> np.ndarray:
    """(len(idx), M, C) probabilities of every head."""
    return np.stack([predict_head(h, feats, idx) for h in model.heads], axis=1)


def train_run(splits: Splits, out_dir: str | os.PathLike, cfg: TrainConfig | None = None, *, final: bool = False,
              cv: bool = True, root=None, progress: bool = True, weights: str | None = None,
              pretrained: bool = True) -> RunResult:
    """Cross-validate over `splits` (one model per fold, out-of-fold predictions, metrics) and,
    with `final`, train the model on all data and save it as `out_dir/model.pt`."""
    from pocovid.evaluation import evaluation_result, write_evaluation
    from pocovid.models import save_model

    cfg = cfg or TrainConfig()
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    timings = {}
    torch.manual_seed(cfg.seed)
    base = build_model(cfg, pretrained=pretrained, weights=weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", {"config": cfg.to_dict(), "pocovid_version": __version__,
                                         "splits_root": str(splits.root), "n_folds": splits.n_folds,
                                         **({"splits_roots": dict(splits.roots), "split_mode": splits.mode}
                                            if len(splits.datasets()) > 1 else {}),
                                         "split_seed": splits.seed})
    frames, feats = prepare(splits, out_dir, cfg, base, root=root, progress=progress)
    timings["prepare_s"] = time.perf_counter() - t0
    dfp = data_fingerprint(frames)
    head_state0 = {k: v.clone() for k, v in base.state_dict().items()}
    clip_fold = np.array([c["fold"] for c in frames.clips])
    n_frames_all = len(frames.frames)
    metrics, oof = None, None
    fold_records = []
    if cv:
        oof_members = np.full((n_frames_all, cfg.n_heads, len(cfg.classes)), np.nan, np.float32)
        t1 = time.perf_counter()
        for k in range(splits.n_folds):
            fold_file = out_dir / f"oof-fold{k}.npz"
            test_c = np.flatnonzero(clip_fold == k)
            train_c = np.flatnonzero(clip_fold != k)
            test_f = np.flatnonzero(np.isin(frames.clip_of, test_c))
            if len(test_c) == 0:
                raise PocovidError(f"fold {k} has no recording of the classes trained on: check the split file")
            if fold_file.exists():  # resume: this fold is done
                d = np.load(fold_file)
                if d["key"].item() == dfp + fingerprint(cfg.to_dict()):
                    oof_members[test_f] = d["probs"]
                    fold_records.append(json.loads(str(d["records"])))
                    continue
            base.load_state_dict(head_state0)
            rec = _train_ensemble(base, feats, frames, train_c, cfg, cfg.seed + 1 + k, f"fold {k}", progress)
            probs = _ensemble_probs(base, feats, test_f)
            oof_members[test_f] = probs
            # the fold's model: out-of-fold explanations (CAMs) and audits need it, not just its numbers
            save_model(base, out_dir / f"fold{k}.pt", training_config=cfg.to_dict(), data_fingerprint=dfp,
                       extra={"fold": k, "heads": rec})
            with atomic_path(fold_file) as tmp, open(tmp, "wb") as f:
                np.savez(f, probs=probs, records=json.dumps(rec), key=np.array(dfp + fingerprint(cfg.to_dict())))
            fold_records.append(rec)
        timings["cv_s"] = time.perf_counter() - t1
        oof = oof_members.mean(1)
        metrics = evaluation_result(frames.y, oof, frames.clip_of, list(cfg.classes), folds=frames.fold,
                                    method=cfg.aggregation)
        metrics["failures"] = frames.failures
        metrics["n_heads"] = cfg.n_heads
        write_evaluation(out_dir / "cv", metrics=metrics, clip_table=_clip_rows(frames, oof, cfg),
                         labels=list(cfg.classes), skipped=frames.failures)
        _write_frame_predictions(out_dir / "cv" / "frame_predictions.csv", frames, oof, oof_members, cfg)
        # every member's out-of-fold probabilities: what uncertainty thresholds are chosen from
        np.savez_compressed(out_dir / "cv" / "oof_members.npz", members=oof_members, clip_of=frames.clip_of,
                            y=frames.y, time_s=frames.time_s, classes=np.array(cfg.classes),
                            paths=np.array([c["path"] for c in frames.clips]),
                            folds=np.array([c["fold"] for c in frames.clips]))
    model_path = None
    if final:
        t2 = time.perf_counter()
        base.load_state_dict(head_state0)
        all_c = np.arange(len(frames.clips))
        rec = _train_ensemble(base, feats, frames, all_c, cfg, cfg.seed + 1000, "final", progress)
        timings["final_s"] = time.perf_counter() - t2
        model_path = out_dir / "model.pt"
        summary = _metrics_summary(metrics) if metrics else None
        save_model(base, model_path, training_config=cfg.to_dict(), data_fingerprint=dfp, metrics=summary,
                   extra={"heads": rec, "n_clips": len(frames.clips), "n_frames": n_frames_all,
                          "splits": {"n_folds": splits.n_folds, "seed": splits.seed},
                          "feature_density": feature_density(feats)})
    timings["total_s"] = time.perf_counter() - t0
    write_json(out_dir / "run.json", {"timings": timings, "folds": fold_records, "data_fingerprint": dfp,
                                      "n_clips": len(frames.clips), "n_frames": n_frames_all,
                                      "failures": frames.failures})
    return RunResult(out_dir, metrics, model_path, frames, oof, timings)


def feature_density(feats) -> dict:
    """The model file's feature density from the clean copy of the cached trunk features."""
    from pocovid.models import fit_feature_density

    return fit_feature_density(np.stack([np.asarray(feats[0, i], np.float32).mean((1, 2))
                                         for i in range(feats.shape[1])]))


def _clip_rows(frames: FrameSet, probs: np.ndarray, cfg: TrainConfig) -> list[dict]:
    from pocovid.evaluation import aggregate_frames

    ids, clip_p = aggregate_frames(probs, frames.clip_of, cfg.aggregation)
    rows = []
    for ci, p in zip(ids, clip_p):
        c = frames.clips[int(ci)]
        row = {"path": c["path"], "label": c["label"], "predicted": cfg.classes[int(np.argmax(p))]}
        row.update({f"p_{name}": round(float(v), 4) for name, v in zip(cfg.classes, p)})
        row.update({"patient": c["patient"], "fold": c["fold"], "n_frames": c["n_frames"]})
        rows.append(row)
    return rows


def _write_frame_predictions(path: Path, frames: FrameSet, probs, members, cfg: TrainConfig) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "time_s", "label", "fold", *[f"p_{c}" for c in cfg.classes], "member_std"])
        for i in range(len(frames.frames)):
            c = frames.clips[int(frames.clip_of[i])]
            w.writerow([c["path"], round(float(frames.time_s[i]), 3), c["label"], c["fold"],
                        *[round(float(v), 4) for v in probs[i]],
                        round(float(members[i].std(0).mean()), 4)])


def _metrics_summary(metrics: dict) -> dict:
    """The cross-validation figures a model file carries (shown by `pocovid model info` / the API)."""
    v = metrics["video"]
    out = {"video": {k: v.get(k) for k in ("n", "accuracy", "balanced_accuracy", "mcc")},
           "frame": {k: metrics["frame"].get(k) for k in ("n", "accuracy", "balanced_accuracy", "mcc")}}
    out["video"]["per_class"] = v.get("per_class")
    if "folds" in metrics:
        out["folds"] = {lvl: {k: metrics["folds"][lvl].get(k) for k in ("accuracy", "balanced_accuracy")}
                        for lvl in ("video", "frame")}
    return out
