"""Patient-level cross-validation and the final model.

    result = train_run(splits, out_dir, TrainConfig(), final=True)

One run: frames are extracted once; the frozen trunk's outputs are cached once (clean and
augmented copies); then for every fold an ensemble of small heads is trained on the other folds
(early stopping on an inner split of *their* patients, never the test fold) and predicts the test
fold. Out-of-fold predictions give the honest figures. `final` trains the same ensemble on all data.
Every step writes its result to `out_dir`, so a killed run resumes where it stopped.

Multi-task (TrainConfig.findings / severity_levels): each head also predicts the findings and the
severity; the targets come from the dataset index (`training/supervision.py`: unknown = masked,
patient-level diagnoses taught as `weak_labels` says, recordings of other classes kept for findings
and severity). The run then also writes `cv/oof_targets.npz` (out-of-fold findings / severity per
frame, the truth per clip, exam ids and LUS scores) and chooses the exam-level method
(`pocovid.models.exam`) on out-of-fold clip outputs; the model file carries it (`extra["exam"]`).
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
from pocovid.training.fit import fit_head, inner_split, predict_head_outputs, reuse_freed_memory, training_dtype
from pocovid.training.frames import FRAMES_VERSION, FrameSet, extract_frames, trunk_features
from pocovid.training.supervision import ClipTargets, FrameTargets, clip_targets, index_lookup


@dataclass
class RunResult:
    out_dir: Path
    metrics: dict | None
    model_path: Path | None
    frames: FrameSet
    oof_probs: np.ndarray | None  # (N frames, C) ensemble mean
    timings: dict


def _peak_memory_gb() -> float | None:
    """This process's peak resident memory so far (GB; None where the platform does not say)."""
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(rss / (1 << 30 if sys.platform == "darwin" else 1 << 20), 3)  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return None


def build_model(cfg: TrainConfig, pretrained: bool = True, weights: str | None = None,
                findings: list[str] | None = None, severity_levels: int | None = None):
    """The model `cfg` describes; `findings` / `severity_levels`: the heads the data can teach
    (default: the config's)."""
    from pocovid.models import create_model

    model = create_model(cfg.backbone, list(cfg.classes), cut=cfg.cut, n_frozen=cfg.n_frozen,
                         adapter_channels=cfg.adapter_channels, dropout=cfg.dropout,
                         spatial_dropout=cfg.spatial_dropout, n_heads=cfg.n_heads,
                         findings=list(cfg.findings) if findings is None else findings,
                         severity_levels=cfg.severity_levels if severity_levels is None else severity_levels,
                         pretrained=pretrained, weights=weights)
    model.training_config = cfg.to_dict()  # what the model sees follows the config (model.input_config)
    return model


def _clips_of(splits: Splits, cfg: TrainConfig, roots: dict | None = None) -> list[dict]:
    """The clips to train on. With several datasets (`roots`: dataset -> folder) each clip's `path` is
    the file's full path and `dataset` / `rel` say which recording it is wherever the data lies.
    Recordings of classes outside `cfg.classes` are kept (for findings and severity only) when the
    model has such heads and `cfg.outside_classes` is 'targets'."""
    outside = cfg.outside_classes == "targets" and bool(cfg.findings or cfg.severity_levels)
    clips = []
    for k, fold in enumerate(splits.folds):
        for it in fold:
            if (it.label in cfg.classes or outside) and (cfg.probe is None or it.probe == cfg.probe):
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


def trunk_cache_name(cfg: TrainConfig, frames_key: str) -> str:
    """The file name of the cached trunk features of `cfg` on the frames cached as
    `frames-{frames_key}.npz`, in the same cache folder."""
    return f"trunk-{fingerprint(cfg.trunk_key() | {'frames': frames_key})}.npy"


def data_fingerprint(frames: FrameSet) -> str:
    """Which recordings (paths, labels, patients, frame counts) a model saw; with several datasets a
    recording is `dataset:path` (wherever its folder lies)."""
    return fingerprint([(f"{c['dataset']}:{c['rel']}" if "rel" in c else c["path"], c["label"], c["patient"],
                         c["n_frames"]) for c in frames.clips])


def _clip_id(c: dict) -> tuple:
    return c.get("dataset"), c.get("rel", c["path"])


def prepare(splits: Splits, out_dir: Path, cfg: TrainConfig, model, root=None, progress=True,
            cache_dir: str | os.PathLike | None = None):
    """Frames and trunk features, from the cache when it matches the config. The cache (`cache_dir`,
    default `out_dir/cache`) is keyed by the recordings, not by how the split file groups them into
    folds: runs on other split files of the same data (k-fold, leave-one-source-out) share it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    size = cfg.size or model.input_size
    roots = _roots_of(splits, root)
    root = None if roots is not None else root if root is not None else splits.root
    clips = _clips_of(splits, cfg, roots)
    if not clips:
        raise PocovidError(f"no recordings of classes {','.join(cfg.classes)}"
                           f"{' and probe ' + cfg.probe if cfg.probe else ''} in the split file")
    recordings = sorted(({k: v for k, v in c.items() if k != "fold"} for c in clips),
                        key=lambda c: json.dumps(c, sort_keys=True))
    fkey = fingerprint(cfg.frames_key() | {"size": size, "recordings": recordings, "root": str(root),
                                           "extraction": FRAMES_VERSION}
                       | ({"roots": roots} if roots is not None else {}))
    fpath = cache / f"frames-{fkey}.npz"
    if fpath.exists():
        frames = FrameSet.load(fpath)
        fold_of = {_clip_id(c): c["fold"] for c in clips}  # this split file's folds, whichever run cached them
        for c in frames.clips:
            c["fold"] = fold_of[_clip_id(c)]
    else:
        frames = extract_frames(clips, root, list(cfg.classes), model.input_config, progress=progress)
        frames.save(fpath)
    present = {c["label"] for c in frames.clips}
    missing = [c for c in cfg.classes if c not in present]
    if missing:
        raise PocovidError(f"no readable recording of class(es) {', '.join(missing)}: cannot train on them")
    tpath = cache / trunk_cache_name(cfg, fkey)
    if tpath.exists():
        feats = np.load(tpath, mmap_mode="r")
    else:
        feats = trunk_features(model, frames.frames, cfg.n_aug, cfg.augment, cfg.seed, progress=progress, out=tpath)
    return frames, feats


def _train_ensemble(model, feats, frames: FrameSet, targets: FrameTargets, clip_idx: np.ndarray, cfg: TrainConfig,
                    seed: int, desc: str, progress: bool, dtype: torch.dtype) -> list[dict]:
    """Train every head of `model` on the frames of clips `clip_idx` (`targets`: per frame); each head
    holds out its own share of those patients for early stopping. Returns one record per head."""
    y = targets
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
                  label_smoothing=cfg.label_smoothing, seed=s, findings_weight=cfg.findings_weight,
                  severity_weight=cfg.severity_weight, dtype=dtype)
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


def _ensemble_outputs(model, feats, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Every head's probabilities on frames `idx`: probs (n, M, C), findings (n, M, F), severity
    (n, M, S) (F, S = 0 without those heads)."""
    outs = [predict_head_outputs(h, feats, idx) for h in model.heads]
    n = len(idx)
    return {"probs": np.stack([o[0] for o in outs], 1).astype(np.float32),
            "findings": (np.stack([o[1] for o in outs], 1) if outs[0][1] is not None
                         else np.zeros((n, len(outs), 0))).astype(np.float32),
            "severity": (np.stack([o[2] for o in outs], 1) if outs[0][2] is not None
                         else np.zeros((n, len(outs), 0))).astype(np.float32)}


def train_run(splits: Splits, out_dir: str | os.PathLike, cfg: TrainConfig | None = None, *, final: bool = False,
              cv: bool = True, root=None, progress: bool = True, weights: str | None = None,
              pretrained: bool = True, cache_dir: str | os.PathLike | None = None) -> RunResult:
    """Cross-validate over `splits` (one model per fold, out-of-fold predictions, metrics) and,
    with `final`, train the model on all data and save it as `out_dir/model.pt`. `cache_dir`: where
    frames and trunk features are cached (default `out_dir/cache`; a shared folder lets runs on other
    split files of the same data skip extraction)."""
    from pocovid.models import save_model

    cfg = cfg or TrainConfig()
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    reuse_freed_memory()
    timings = {}
    torch.manual_seed(cfg.seed)
    base = build_model(cfg, pretrained=pretrained, weights=weights, findings=[], severity_levels=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", {"config": cfg.to_dict(), "pocovid_version": __version__,
                                         "splits_root": str(splits.root), "n_folds": splits.n_folds,
                                         **({"splits_roots": dict(splits.roots), "split_mode": splits.mode}
                                            if len(splits.datasets()) > 1 else {}),
                                         "split_seed": splits.seed,
                                         "cache_dir": str(Path(cache_dir) if cache_dir is not None
                                                          else out_dir / "cache")})
    frames, feats = prepare(splits, out_dir, cfg, base, root=root, progress=progress, cache_dir=cache_dir)
    targets, heads_note = _targets(splits, frames, cfg, root)
    torch.manual_seed(cfg.seed)
    base = _with_heads(base, build_model(cfg, pretrained=False, findings=heads_note["findings"],
                                         severity_levels=heads_note["severity_levels"]))
    ft = targets.frames(frames.clip_of, heads_note["findings"], bool(heads_note["severity_levels"]))
    timings["prepare_s"] = time.perf_counter() - t0
    dfp = data_fingerprint(frames)
    dtype = training_dtype(cfg.precision, trains_backbone=base.n_frozen < base.cut)
    precision = str(dtype).removeprefix("torch.")  # what "auto" is on this CPU, for this model
    # folds trained in another precision (another CPU under "auto") are not this run's
    run_key = dfp + fingerprint([cfg.to_dict(), targets.fingerprint_data(), precision])
    head_state0 = {k: v.clone() for k, v in base.state_dict().items()}
    clip_fold = np.array([c["fold"] for c in frames.clips])
    n_frames_all = len(frames.frames)
    metrics, oof, exam = None, None, None
    fold_records = []
    resumed = False
    earlier = _recorded_timings(out_dir)  # an earlier call's, kept if this one resumes its folds
    if cv:
        t1 = time.perf_counter()
        oof_out = None
        for k in range(splits.n_folds):
            fold_file = out_dir / f"oof-fold{k}.npz"
            test_c = np.flatnonzero(clip_fold == k)
            train_c = np.flatnonzero(clip_fold != k)
            test_f = np.flatnonzero(np.isin(frames.clip_of, test_c))
            if len(test_c) == 0:
                raise PocovidError(f"fold {k} has no recording of the classes trained on: check the split file")
            outs = None
            if fold_file.exists():  # resume: this fold is done
                d = np.load(fold_file)
                if d["key"].item() == run_key:
                    outs = {name: d[name] for name in ("probs", "findings", "severity")}
                    fold_records.append(json.loads(str(d["records"])))
                    resumed = True
            if outs is None:
                base.load_state_dict(head_state0)
                rec = _train_ensemble(base, feats, frames, ft, train_c, cfg, cfg.seed + 1 + k, f"fold {k}", progress,
                                      dtype)
                outs = _ensemble_outputs(base, feats, test_f)
                # the fold's model: out-of-fold explanations (CAMs) and audits need it, not just its numbers
                save_model(base, out_dir / f"fold{k}.pt", training_config=cfg.to_dict(), data_fingerprint=dfp,
                           extra={"fold": k, "heads": rec, "precision": precision})
                with atomic_path(fold_file) as tmp, open(tmp, "wb") as f:
                    np.savez(f, **outs, records=json.dumps(rec), key=np.array(run_key))
                fold_records.append(rec)
            if oof_out is None:
                oof_out = {name: np.full((n_frames_all, *v.shape[1:]), np.nan, np.float32) for name, v in outs.items()}
            for name, v in outs.items():
                oof_out[name][test_f] = v
        timings["cv_s"] = time.perf_counter() - t1
        oof_members = oof_out["probs"]
        oof = oof_members.mean(1)
        metrics = _diagnosis_metrics(out_dir, frames, oof, oof_members, cfg)
        exam = _exam_and_targets(out_dir, frames, targets, oof_out, heads_note, splits.n_folds, cfg, metrics)
        write_json(out_dir / "cv" / "metrics.json", metrics)
        if final:  # the cross-validation's record stands if the final model's training is stopped
            _write_run_record(out_dir, timings | {"total_s": time.perf_counter() - t0}, fold_records, dfp,
                              precision, frames, heads_note, exam, earlier if resumed else None)
    model_path = None
    if final:
        t2 = time.perf_counter()
        base.load_state_dict(head_state0)
        all_c = np.arange(len(frames.clips))
        rec = _train_ensemble(base, feats, frames, ft, all_c, cfg, cfg.seed + 1000, "final", progress, dtype)
        timings["final_s"] = time.perf_counter() - t2
        model_path = out_dir / "model.pt"
        summary = _metrics_summary(metrics) if metrics else None
        save_model(base, model_path, training_config=cfg.to_dict(), data_fingerprint=dfp, metrics=summary,
                   extra={"heads": rec, "precision": precision, "n_clips": len(frames.clips), "n_frames": n_frames_all,
                          "splits": {"n_folds": splits.n_folds, "seed": splits.seed},
                          "feature_density": feature_density(feats), "targets": heads_note,
                          "exam": exam or _exam_without_cv(cfg)})
    timings["total_s"] = time.perf_counter() - t0
    timings = _write_run_record(out_dir, timings, fold_records, dfp, precision, frames, heads_note, exam,
                                earlier if resumed else None)
    return RunResult(out_dir, metrics, model_path, frames, oof, timings)


def _recorded_timings(out_dir: Path) -> dict | None:
    try:
        t = json.loads((out_dir / "run.json").read_text()).get("timings")
    except (OSError, ValueError, AttributeError):
        return None
    return t if isinstance(t, dict) else None


def _write_run_record(out_dir: Path, timings: dict, fold_records: list, dfp: str, precision: str,
                      frames: FrameSet, heads_note: dict, exam: dict | None, earlier: dict | None) -> dict:
    """Write `out_dir/run.json` (what the run took and trained; `earlier`: the timings of the call
    that trained the folds this one resumed, kept, not overwritten); returns the timings written."""
    timings = dict(timings, peak_memory_gb=_peak_memory_gb())
    if earlier:
        timings["earlier"] = earlier
    write_json(out_dir / "run.json", {"timings": timings, "folds": fold_records, "data_fingerprint": dfp,
                                      "precision": precision,
                                      "n_clips": len(frames.clips), "n_frames": len(frames.clip_of),
                                      "failures": frames.failures, "targets": heads_note,
                                      **({"exam": exam} if exam else {})})
    return timings


def _with_heads(trunk_model, model):
    """`model` (the heads the data can teach) with the trunk weights of `trunk_model` (pretrained,
    or loaded from `weights`), keeping its training config."""
    model.trunk.load_state_dict(trunk_model.trunk.state_dict())
    for mine, theirs in zip(model.heads, trunk_model.heads):
        mine.tail.load_state_dict(theirs.tail.state_dict())
    model.training_config = trunk_model.training_config
    return model


def _targets(splits: Splits, frames: FrameSet, cfg: TrainConfig, root) -> tuple[ClipTargets, dict]:
    """Per-clip targets from the dataset index, and which heads the data can teach (a finding with
    no yes or no no, or a severity never given, gets no head)."""
    roots = _roots_of(splits, root)
    folder = roots if roots is not None else root if root is not None else splits.root
    lookup, notes = index_lookup(folder)
    targets = clip_targets(frames.clips, lookup, list(cfg.classes), list(cfg.findings), cfg.weak_labels)
    kept, dropped = targets.usable_findings(list(cfg.findings))
    n_sev = int(np.sum(~np.isnan(targets.severity)))
    levels = cfg.severity_levels if n_sev else 0
    if cfg.severity_levels and not n_sev:
        notes.append("no recording has a severity: no severity head")
    n_in = int(np.sum([c["label"] in cfg.classes for c in frames.clips]))
    note = {"findings": kept, "dropped_findings": dropped, "severity_levels": levels, "weak_labels": cfg.weak_labels,
            "outside_classes": cfg.outside_classes,
            "n_clips": len(frames.clips), "n_clips_of_classes": n_in,
            "n_diagnosis_targets": int(np.sum(targets.y >= 0)),
            "n_masked_weak": int(n_in - np.sum(targets.y >= 0)),
            "n_severity_known": n_sev,
            "n_findings_known": {f: int(np.sum(~np.isnan(targets.findings[:, targets.names.index(f)])))
                                 for f in targets.names},
            "notes": notes}
    return targets, note


def _diagnosis_metrics(out_dir: Path, frames: FrameSet, oof: np.ndarray, oof_members: np.ndarray,
                       cfg: TrainConfig) -> dict:
    """The clip / frame diagnosis figures over the recordings of the trained classes (labels as the
    index gives them: a COVID-BLUES recording is scored against its patient's diagnosis)."""
    from pocovid.evaluation import evaluation_result, write_evaluation

    y = frames.y
    d = np.flatnonzero(y >= 0)
    metrics = evaluation_result(y[d], oof[d], frames.clip_of[d], list(cfg.classes), folds=frames.fold[d],
                                method=cfg.aggregation)
    metrics["failures"] = frames.failures
    metrics["n_heads"] = cfg.n_heads
    write_evaluation(out_dir / "cv", metrics=metrics, clip_table=_clip_rows(frames, oof, cfg, d),
                     labels=list(cfg.classes), skipped=frames.failures)
    _write_frame_predictions(out_dir / "cv" / "frame_predictions.csv", frames, oof, oof_members, cfg)
    # every member's out-of-fold probabilities: what uncertainty thresholds are chosen from
    np.savez_compressed(out_dir / "cv" / "oof_members.npz", members=oof_members[d], clip_of=frames.clip_of[d],
                        y=y[d], time_s=frames.time_s[d], classes=np.array(cfg.classes),
                        paths=np.array([c["path"] for c in frames.clips]),
                        folds=np.array([c["fold"] for c in frames.clips]))
    return metrics


def _clip_means(values: np.ndarray, clip_of: np.ndarray, n_clips: int) -> np.ndarray:
    """(n_clips, ...) mean over each clip's frames (and over the members, axis 1) of (N, M, ...)."""
    v = values.mean(1)
    out = np.full((n_clips, *v.shape[1:]), np.nan, np.float64)
    for c in range(n_clips):
        sel = clip_of == c
        if sel.any():
            out[c] = v[sel].mean(0)
    return out


def exam_from_run(run_dir: str | os.PathLike, exam_method: str = "auto") -> dict:
    """The exam method chosen again (`choose_exam_method`) from a finished run's out-of-fold
    outputs (`RUN/cv/oof_targets.npz`): for a run made before a method existed."""
    return exam_methods_of_run(run_dir, exam_method)[0]


def exam_method_across_sites(runs) -> tuple[str, dict[str, float]]:
    """(method, method -> mean exam log loss): the exam method that does best on exams of sites it
    was not fitted on, from finished leave-one-dataset-out / leave-one-source-out runs (each fold's
    combiner fitted on the other folds' exams, `choose_exam_method`), averaged over the runs. A
    combiner that reads a dataset's clip count or prevalence wins on random patient folds and loses
    here, where a new hospital's exams are."""
    from pocovid.models.exam import EXAM_METHODS

    losses = [exam_from_run(r)["oof_log_loss"] for r in runs]
    if not losses:
        raise ValueError("no cross-site run given")
    mean = {m: float(np.mean([loss[m] for loss in losses])) for m in EXAM_METHODS if all(m in x for x in losses)}
    return min(mean, key=mean.get), mean


def exam_methods_of_run(run_dir: str | os.PathLike, exam_method: str = "auto") -> tuple[dict, dict, dict, list[str]]:
    """`choose_exam_method` on a finished run's out-of-fold outputs: (the chosen method's record,
    method -> {exam: out-of-fold probabilities}, exam -> class index, classes)."""
    d = np.load(Path(run_dir) / "cv" / "oof_targets.npz", allow_pickle=False)
    n = len(d["paths"])
    clip_f = _clip_means(d["findings"], d["clip_of"], n)
    clip_s = _clip_means(d["severity"], d["clip_of"], n)
    classes = [str(c) for c in d["classes"]]
    t = ClipTargets(d["diagnosis_target"], np.zeros((n, 0)), d["truth_severity"], [], d["exam"].astype(str),
                    d["zone"], d["dataset"], d["label_scope"], d["label"].astype(str))
    labels = exam_labels_of(t, classes)
    exam, exam_p = choose_exam_method(d["clip_probs"].astype(np.float64), clip_f, clip_s, t.exam, d["fold"],
                                      labels, classes, [str(f) for f in d["finding_names"]], exam_method)
    return exam, exam_p, labels, classes


def exam_labels_of(targets: ClipTargets, classes: list[str]) -> dict:
    """exam -> class index: its recordings' one label among `classes`; a disease beside 'regular'
    recordings is the disease; two diseases, or no label among the classes: no label."""
    labels: dict[str, set] = {}
    for e, lab in zip(targets.exam, targets.label):
        labels.setdefault(str(e), set()).add(str(lab))
    out = {}
    for e, labs in labels.items():
        labs = {lab for lab in labs if lab in classes}
        if len(labs) > 1:
            labs.discard("regular")
        if len(labs) == 1:
            out[e] = classes.index(labs.pop())
    return out


def choose_exam_method(clip_p: np.ndarray, clip_f: np.ndarray, clip_s: np.ndarray, exam_ids: np.ndarray,
                       fold: np.ndarray, labels: dict, classes: list[str], finding_names: list[str],
                       exam_method: str = "auto") -> tuple[dict, dict[str, dict]]:
    """Each exam method scored out of fold on the clips' out-of-fold outputs (class, finding and
    severity probabilities per clip; a logistic combination is fitted on the OTHER folds' exams), the
    one with the lowest exam log loss chosen (`exam_method` 'auto') and refitted on every exam.
    Returns (the model file's `extra["exam"]`, method -> {exam: probabilities}, every exam of a fold
    that holds a labelled one, unlabelled exams such as COVID-BLUES's `other` patients included)."""
    from pocovid.models.exam import EXAM_METHODS, SIGN_METHODS, exam_probabilities, fit_exam_combiner

    has_signs = clip_f.shape[1] > 0 and clip_s.shape[1] > 0
    methods = [m for m in EXAM_METHODS if exam_method in ("auto", m) and (has_signs or m not in SIGN_METHODS)]
    scored = np.array([e in labels for e in exam_ids])

    def fit(m, sel):
        signs = (dict(findings=clip_f[sel], severity=clip_s[sel], finding_names=finding_names)
                 if m in SIGN_METHODS else {})
        return fit_exam_combiner(clip_p[sel], exam_ids[sel], labels, classes, **signs)

    exam_p: dict[str, dict] = {}
    for m in methods:
        got = {}
        for k in np.unique(fold):
            # every exam of the fold gets probabilities (patients.csv lists the unlabelled ones too);
            # the combiners are fitted, and the methods scored, on labelled exams only
            sel = fold == k
            if not (sel & scored).any():
                continue
            params = None
            if m.startswith("logistic"):
                try:
                    params = fit(m, scored & (fold != k))
                except ValueError:
                    continue
            signs = dict(findings=clip_f[sel], severity=clip_s[sel]) if m in SIGN_METHODS else {}
            ids, p = exam_probabilities(clip_p[sel], exam_ids[sel], m, classes=classes, params=params, **signs)
            got.update(zip(ids.tolist(), p))
        if got:
            exam_p[m] = got
    losses = {m: float(np.mean([-np.log(max(p[labels[e]], 1e-12)) for e, p in got.items() if e in labels]))
              for m, got in exam_p.items()}
    chosen = min(losses, key=losses.get) if losses else "mean"
    exam = {"method": chosen, "selected_by": ("lowest out-of-fold exam log loss" if exam_method == "auto"
                                              else "TrainConfig.exam_method"),
            "oof_log_loss": losses, "n_exams": sum(e in labels for e in exam_p.get(chosen, {}))}
    if chosen.startswith("logistic"):
        exam["params"] = fit(chosen, scored)
    return exam, exam_p


def _exam_and_targets(out_dir: Path, frames: FrameSet, targets: ClipTargets, oof_out: dict, heads: dict,
                      n_folds: int, cfg: TrainConfig, metrics: dict) -> dict:
    """Out-of-fold findings / severity (`cv/oof_targets.npz`), the exam-level method chosen on
    out-of-fold clip outputs, and their figures in `metrics` (evaluation.targets, when present)."""
    from pocovid.models.exam import lus_score

    classes = list(cfg.classes)
    n_clips = len(frames.clips)
    clip_p = _clip_means(oof_out["probs"], frames.clip_of, n_clips)
    clip_f = _clip_means(oof_out["findings"], frames.clip_of, n_clips)
    clip_s = _clip_means(oof_out["severity"], frames.clip_of, n_clips)
    fold = np.array([c["fold"] for c in frames.clips])
    labels = exam_labels_of(targets, classes)
    exam, exam_p = choose_exam_method(clip_p, clip_f, clip_s, targets.exam, fold, labels, classes,
                                      list(heads["findings"]), cfg.exam_method)
    chosen = exam["method"]
    lus_ids, lus = (lus_score(clip_s, targets.exam, targets.zone) if clip_s.shape[1]
                    else (np.unique(targets.exam), np.full(len(np.unique(targets.exam)), np.nan)))
    np.savez_compressed(
        out_dir / "cv" / "oof_targets.npz",
        clip_of=frames.clip_of, findings=oof_out["findings"], severity=oof_out["severity"],
        finding_names=np.array(heads["findings"], str), severity_levels=np.array(heads["severity_levels"]),
        paths=np.array([c.get("rel", c["path"]) for c in frames.clips], str), dataset=targets.dataset,
        exam=targets.exam, zone=targets.zone, label=targets.label, label_scope=targets.label_scope,
        fold=fold, diagnosis_target=targets.y,
        truth_findings=(targets.findings[:, [targets.names.index(f) for f in heads["findings"]]]
                        if heads["findings"] else np.zeros((n_clips, 0), np.float32)),
        truth_severity=targets.severity, clip_probs=clip_p.astype(np.float32), classes=np.array(classes, str),
        exam_ids=lus_ids, lus_score=lus)
    _target_metrics(out_dir, metrics, targets, heads, clip_f, clip_s, exam_p, labels, classes, chosen,
                    dict(zip(map(str, lus_ids), lus)) if clip_s.shape[1] else None)
    return exam


def _target_metrics(out_dir: Path, metrics: dict, targets: ClipTargets, heads: dict, clip_f, clip_s,
                    exam_p: dict, labels: dict, classes: list[str], chosen: str, lus: dict | None) -> None:
    """Findings, severity (all recordings, and per dataset) and exam figures from evaluation.targets
    into `metrics`, patients.csv of the chosen exam method; skipped while evaluation.targets is absent."""
    try:
        from pocovid.evaluation import targets as tm
        from pocovid.evaluation.report import write_patients
    except ImportError:
        metrics["targets_note"] = "pocovid.evaluation.targets is missing: no findings / severity / exam figures"
        return
    groups = {"all": np.ones(len(targets.y), bool)}
    if len(set(targets.dataset)) > 1:
        groups.update({str(ds): targets.dataset == ds for ds in sorted(set(targets.dataset))})
    names = heads["findings"]
    if names:
        truth = targets.findings[:, [targets.names.index(f) for f in names]]
        per = {g: tm.finding_metrics(truth[sel], clip_f[sel], list(names)) for g, sel in groups.items()}
        metrics["findings"] = per.pop("all")
        if per:
            metrics["findings_by_dataset"] = per
    if heads["severity_levels"] == len(tm.SEVERITY_LEVELS):
        per = {g: tm.severity_metrics(targets.severity[sel], clip_s[sel]) for g, sel in groups.items()}
        metrics["severity"] = per.pop("all")
        if per:
            metrics["severity_by_dataset"] = per
    if exam_p:
        # every patient's label, one outside the classes ('other') too: such a patient counts as not
        # COVID-19 in the exam figures and is listed in patients.csv
        every = classes + sorted(set(map(str, targets.label)) - set(classes) - {""})
        named = {e: every[i] for e, i in exam_labels_of(targets, every).items()}
        # every method's out-of-fold exam probabilities, scored as one "clip" per exam
        per = {}
        for m, got in exam_p.items():
            ids = np.array(list(got))
            per[m] = dict(tm.exam_metrics(ids, np.stack([got[e] for e in ids]), named, classes, method="mean"),
                          method=m)
        metrics["exams"] = per[chosen]
        metrics["exam_methods"] = per
        got = exam_p[chosen]
        ids = np.array(list(got))
        dataset = {str(e): str(d) for e, d in zip(targets.exam, targets.dataset)}
        n_clips = {str(e): int(np.sum(targets.exam == e)) for e in ids}
        extra = {"dataset": [dataset[str(e)] for e in ids], "n_clips": [n_clips[str(e)] for e in ids]}
        if lus is not None:
            extra["lus_score"] = [round(float(lus[str(e)]), 3) for e in ids]
        write_patients(out_dir / "cv" / "patients.csv",
                       tm.exam_table(ids, np.stack([got[e] for e in ids]), named, classes, method="mean",
                                     extra=extra), classes)


def feature_density(feats) -> dict:
    """The model file's feature density from the clean copy of the cached trunk features."""
    from pocovid.models import fit_feature_density

    return fit_feature_density(np.stack([np.asarray(feats[0, i], np.float32).mean((1, 2))
                                         for i in range(feats.shape[1])]))


def _exam_without_cv(cfg: TrainConfig) -> dict:
    """The exam method of a model trained without cross-validation: nothing out of fold to fit or
    choose on, so 'mean' unless the config names a method that needs no fitting."""
    m = cfg.exam_method if cfg.exam_method not in ("auto", "logistic") else "mean"
    return {"method": m, "selected_by": "no cross-validation: " + ("TrainConfig.exam_method" if m != "mean"
                                                                      else "the default")}


def _clip_rows(frames: FrameSet, probs: np.ndarray, cfg: TrainConfig, frames_idx: np.ndarray) -> list[dict]:
    from pocovid.evaluation import aggregate_frames

    ids, clip_p = aggregate_frames(probs[frames_idx], frames.clip_of[frames_idx], cfg.aggregation)
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
