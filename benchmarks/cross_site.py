"""Every target row of issue 11 from out-of-fold predictions, side by side per model config.

    python benchmarks/cross_site.py lite0=runs/l0-k5 lite0=runs/l0-lodo lite0=runs/l0-loso \\
                                    vgg16=runs/vgg-k5 vgg16=runs/vgg-lodo [--no-baseline] \\
                                    [--exam-method mean|max|noisy_or|logistic|logistic_signs]

Each argument is `[LABEL[/MODE]=]RUN`: a folder written by `pocovid train ... --splits S --out RUN`.
Runs with the same LABEL (default: the folder's name) form one column; MODE (kfold, lodo, loso) is
read from RUN/config.json (`split_mode`; kfold when absent) unless given. Nothing is trained but the
baseline: beside every config, the frozen-trunk logistic regression (`pocovid.evaluation.baseline`)
on the run's cached trunk features (RUN/cache/trunk-*.npy or its `--cache` folder, clean copy, pooled) and the same
folds. What a run lacks (no findings head, no cv/oof_targets.npz, no LODO run) prints "—".

Rows (issue 11's table):
  POCUS 5-fold, convex 3 classes, clip: balanced accuracy / COVID sensitivity / specificity   (kfold)
  COVID-BLUES patient (exam) COVID-19 vs not: accuracy / AUC                                  (kfold)
  LODO POCUS -> BLUES patients, COVID AUC                                                     (lodo)
  (LODO BLUES -> POCUS convex clips, LOSO POCUS convex clips: balanced accuracy / sens / spec)
  severity 0-3 on BLUES per video, quadratic weighted kappa: median level / argmax           (kfold)
  B-lines on BLUES per video, F1                                                              (kfold)
  wall time / peak memory of the kfold run (RUN/run.json)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

POCUS, BLUES = "pocus", "covid-blues"
THREE = ("covid", "pneumonia", "regular")
MODES = ("kfold", "lodo", "loso")
DASH = "—"


@dataclass
class Preds:
    """Out-of-fold outputs of one run, one row per clip (NaN where a clip got no prediction)."""

    clips: list[dict]  # path, label, patient, fold, probe, dataset, exam
    classes: list[str]
    probs: np.ndarray  # (n_clips, C)
    finding_names: list[str]
    findings: np.ndarray | None  # (n_clips, F) probabilities
    truth_findings: np.ndarray | None  # (n_clips, F) 1 / 0 / NaN
    severity: np.ndarray | None  # (n_clips, 4)
    truth_severity: np.ndarray | None  # (n_clips,)

    def column(self, key: str) -> np.ndarray:
        return np.array([str(c.get(key) or "") for c in self.clips])


@dataclass
class Run:
    path: Path
    label: str
    mode: str
    preds: Preds
    info: dict  # run.json
    frames_file: Path | None  # RUN/cache/frames-*.npz of these clips
    trunk_file: Path | None  # RUN/cache/trunk-*.npy of those frames


# ------------------------------------------------------------------------------- reading runs

def _clip_means(values: np.ndarray, clip_of: np.ndarray, n_clips: int) -> np.ndarray:
    """(n_clips, K) mean over each clip's frames of (N, K) or (N, M, K) (members averaged first)."""
    v = np.asarray(values, np.float64)
    if v.ndim == 3:
        v = v.mean(1)
    out = np.full((n_clips, v.shape[1]), np.nan)
    sums = np.zeros((n_clips, v.shape[1]))
    counts = np.bincount(clip_of, minlength=n_clips)
    np.add.at(sums, clip_of, v)
    seen = counts > 0
    out[seen] = sums[seen] / counts[seen, None]
    return out


def _frames_file(cache: Path, paths: list[str]) -> tuple[Path | None, list[dict] | None]:
    """The cached FrameSet whose clips are the run's (newest first), and its clips."""
    for f in sorted(cache.glob("frames-*.npz"), key=lambda p: -p.stat().st_mtime):
        with np.load(f, allow_pickle=False) as d:
            clips = json.loads(str(d["clips"]))
        names = [c.get("rel", c["path"]) for c in clips]
        if [c["path"] for c in clips] == paths or names == paths:
            return f, clips
    return None, None


def _trunk_file(cache: Path, n_frames: int, frames_file: Path, config: dict) -> Path | None:
    """The cached frozen-trunk features the baseline probes: those of the run's own config with every
    used stage frozen. A run that fine-tunes late stages (`n_frozen` set) caches earlier maps only,
    so it has a baseline only where the fully frozen run's cache lies beside its own. Runs whose
    config is not recorded: the newest trunk cache of as many frames."""
    if config.get("config"):
        from pocovid.training.config import TrainConfig
        from pocovid.training.cv import trunk_cache_name

        cfg = replace(TrainConfig.from_dict(config["config"]), n_frozen=None)
        f = cache / trunk_cache_name(cfg, frames_file.stem.removeprefix("frames-"))
        if f.is_file():
            return f
        if config["config"].get("n_frozen") is not None:  # its own cache: earlier-stage maps only
            return None
    for f in sorted(cache.glob("trunk-*.npy"), key=lambda p: -p.stat().st_mtime):
        if np.load(f, mmap_mode="r").shape[1] == n_frames:
            return f
    return None


def _dataset_of(clip: dict, config: dict) -> str:
    if clip.get("dataset"):
        return str(clip["dataset"])
    patient = str(clip.get("patient", ""))
    if ":" in patient:
        return patient.split(":", 1)[0]
    from pocovid.data.index import dataset_of_folder

    return dataset_of_folder(Path(config.get("splits_root", ".")))


def load_run(spec: str) -> Run:
    label, _, path = spec.rpartition("=")
    path = Path(path)
    label, _, mode = label.partition("/")
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    mode = mode or config.get("split_mode") or "kfold"
    if mode not in MODES:
        raise SystemExit(f"error: {spec}: mode {mode!r} is not one of {', '.join(MODES)}")
    members_file = path / "cv" / "oof_members.npz"
    if not members_file.is_file():
        raise SystemExit(f"error: {path}: no cv/oof_members.npz (not a cross-validation run folder)")
    with np.load(members_file, allow_pickle=False) as d:
        mem = {k: d[k] for k in d.files}
    paths = [str(p) for p in mem["paths"]]
    classes = [str(c) for c in mem["classes"]]
    cache = Path(config["cache_dir"]) if config.get("cache_dir") else path / "cache"  # `train --cache` may share one
    frames_file, clips = _frames_file(cache, paths)
    if clips is not None:  # a shared cache's clips carry the folds of the run that cached them: this run's
        for c, f in zip(clips, mem["folds"]):
            c["fold"] = int(f)
    if clips is None:  # cache removed: what cv/predictions.csv says of each clip
        import csv

        rows = {r["path"]: r for r in csv.DictReader(open(path / "cv" / "predictions.csv", newline=""))}
        clips = [dict(rows.get(p, {}), path=p, fold=int(f)) for p, f in zip(paths, mem["folds"])]
    cfg = config.get("config", {})
    for c in clips:
        c["dataset"] = _dataset_of(c, config)
        c.setdefault("probe", cfg.get("probe") or "")
        c["exam"] = c.get("exam") or c.get("patient", "")
    preds = Preds(clips, classes, _clip_means(mem["members"], mem["clip_of"], len(clips)), [], None, None, None,
                  None)
    tfile = path / "cv" / "oof_targets.npz"
    if tfile.is_file():
        preds = _with_targets(preds, tfile)
    info = json.loads((path / "run.json").read_text()) if (path / "run.json").is_file() else {}
    n_frames = None
    if frames_file is not None:
        with np.load(frames_file, allow_pickle=False) as d:
            n_frames = len(d["clip_of"])
    trunk = _trunk_file(cache, n_frames, frames_file, config) if n_frames else None
    return Run(path, label or path.name, mode, preds, info, frames_file, trunk)


def _with_targets(preds: Preds, tfile: Path) -> Preds:
    """The findings / severity of cv/oof_targets.npz (and its clip probabilities, which include the
    clips the diagnosis was not scored on: weak labels, classes outside the model's)."""
    with np.load(tfile, allow_pickle=False) as d:
        t = {k: d[k] for k in d.files}
    n = len(preds.clips)
    clips = [dict(c) for c in preds.clips]
    # label too: a run whose cache is gone lists only the scored clips in predictions.csv, not the `other` ones
    for key in ("exam", "dataset", "label"):
        if key in t and len(t[key]) == n:
            for c, v in zip(clips, t[key]):
                c[key] = str(v) or c.get(key, "")
    probs = preds.probs
    if "clip_probs" in t and t["clip_probs"].shape == probs.shape:
        probs = np.where(np.isfinite(t["clip_probs"]), t["clip_probs"], probs)
    names = [str(x) for x in t.get("finding_names", [])]
    clip_of = t["clip_of"]
    findings = (_clip_means(t["findings"], clip_of, n) if names and t.get("findings") is not None
                and t["findings"].shape[-1] == len(names) else None)
    severity = (_clip_means(t["severity"], clip_of, n) if t.get("severity") is not None
                and t["severity"].shape[-1] == 4 else None)
    truth_f = np.asarray(t["truth_findings"], float) if "truth_findings" in t else None
    truth_s = np.asarray(t["truth_severity"], float) if "truth_severity" in t else None
    return replace(preds, clips=clips, probs=probs, finding_names=names, findings=findings,
                   truth_findings=truth_f if truth_f is not None and truth_f.shape == (n, len(names)) else None,
                   severity=severity, truth_severity=truth_s)


# ----------------------------------------------------------------------------------- baseline

def baseline(run: Run) -> Run | None:
    """The frozen-trunk logistic regression on the run's cached features and folds: diagnosis (the
    clips' labels among the run's classes), and, where oof_targets.npz gives the truth, B-lines and
    the findings (one binary regression each) and severity (multinomial)."""
    if run.frames_file is None or run.trunk_file is None:
        return None
    from pocovid.evaluation.baseline import logistic_oof, pooled_features

    p = run.preds
    with np.load(run.frames_file, allow_pickle=False) as d:
        clip_of = d["clip_of"]
    X = pooled_features(np.load(run.trunk_file, mmap_mode="r"))
    fold = np.array([int(c["fold"]) for c in p.clips])[clip_of]
    n = len(p.clips)
    y_clip = np.array([p.classes.index(c["label"]) if c["label"] in p.classes else -1 for c in p.clips])
    probs = _clip_means(logistic_oof(X, y_clip[clip_of], fold, len(p.classes)), clip_of, n)
    findings = severity = None
    if p.truth_findings is not None and p.finding_names:
        cols = []
        for j in range(len(p.finding_names)):
            pj = logistic_oof(X, p.truth_findings[clip_of, j], fold, 2)
            cols.append(_clip_means(pj[:, 1:], clip_of, n)[:, 0])
        findings = np.stack(cols, 1)
    if p.truth_severity is not None and np.isfinite(p.truth_severity).any():
        severity = _clip_means(logistic_oof(X, p.truth_severity[clip_of], fold, 4), clip_of, n)
    preds = replace(p, probs=probs, findings=findings, severity=severity)
    return replace(run, label=f"{run.label} frozen+LR", preds=preds)


# --------------------------------------------------------------------------------------- rows

def _f(v) -> str:
    return DASH if v is None else f"{v:.3f}"


def pocus_convex(p: Preds) -> str:
    """POCUS convex 3-class clips: balanced accuracy / COVID sensitivity / specificity."""
    from pocovid.evaluation import classification_metrics

    cols = [p.classes.index(c) for c in THREE if c in p.classes]
    if len(cols) < 3:
        return DASH
    ok = np.isfinite(p.probs).all(1)
    sel = ((p.column("dataset") == POCUS) & (p.column("probe") == "convex") & np.isin(p.column("label"), THREE)
           & ok)
    if not sel.any():
        return DASH
    q = p.probs[sel][:, cols]
    q = q / np.clip(q.sum(1, keepdims=True), 1e-12, None)
    m = classification_metrics(p.column("label")[sel], q, list(THREE))
    cov = m["per_class"]["covid"]
    return f"{_f(m['balanced_accuracy'])} / {_f(cov['sensitivity'])} / {_f(cov['specificity'])}"


def _exam_labels(p: Preds, sel: np.ndarray) -> dict:
    """exam -> label: its clips' one label; a disease beside 'regular' clips is the disease."""
    labels: dict[str, set] = {}
    for e, lab in zip(p.column("exam")[sel], p.column("label")[sel]):
        labels.setdefault(e, set()).add(lab)
    out = {}
    for e, labs in labels.items():
        if len(labs) > 1:
            labs.discard("regular")
        if len(labs) == 1:
            out[e] = labs.pop()
    return out


def learned_exam_probs(p: Preds, method: str) -> dict[str, np.ndarray]:
    """A learned exam combiner's (logistic, logistic_signs) out-of-fold exam probabilities, as
    training scores them (`choose_exam_method`): for each fold, fitted on the labelled exams of the
    other folds (both datasets), applied to every exam of the fold. Empty where the run lacks what
    the method needs (findings and severity for logistic_signs)."""
    from pocovid.models.exam import SIGN_METHODS
    from pocovid.training.cv import choose_exam_method

    has_signs = p.findings is not None and p.severity is not None
    got: dict = {}
    if has_signs or method not in SIGN_METHODS:
        ok = np.isfinite(p.probs).all(1)
        if method in SIGN_METHODS:
            ok &= np.isfinite(p.findings).all(1) & np.isfinite(p.severity).all(1)
        labels = {e: p.classes.index(lab) for e, lab in _exam_labels(p, ok).items() if lab in p.classes}
        empty = np.zeros((len(p.clips), 0))
        _, by_method = choose_exam_method(
            p.probs[ok], (p.findings if has_signs else empty)[ok], (p.severity if has_signs else empty)[ok],
            p.column("exam")[ok], np.array([int(c["fold"]) for c in p.clips])[ok], labels, p.classes,
            p.finding_names, method)
        got = by_method.get(method, {})
    return got


def blues_exams(p: Preds, method: str, model_classes_only: bool = False) -> dict | None:
    """COVID-19 vs not over the BLUES exams (patients): exam_metrics' covid_vs_rest block. All
    patients (`other` ones count as not COVID-19), or those whose label is a model class. `method`:
    an aggregation of the clips' probabilities (mean, max, noisy_or) or a learned combiner."""
    from pocovid.evaluation import exam_metrics

    sel = (p.column("dataset") == BLUES) & np.isfinite(p.probs).all(1)
    if model_classes_only:
        sel &= np.isin(p.column("label"), p.classes)
    if not sel.any() or "covid" not in p.classes:
        return None
    labels = _exam_labels(p, sel)
    if method.startswith("logistic"):
        got = learned_exam_probs(p, method)
        ids = np.array([e for e in got if e in labels])
        if not len(ids):
            return None
        # one "clip" per exam: its out-of-fold exam probabilities
        return exam_metrics(ids, np.stack([got[e] for e in ids]), labels, p.classes, method="mean")["covid_vs_rest"]
    return exam_metrics(p.column("exam")[sel], p.probs[sel], labels, p.classes, method=method)["covid_vs_rest"]


def blues_severity_kappa(p: Preds) -> str:
    from pocovid.evaluation import severity_metrics

    if p.severity is None or p.truth_severity is None:
        return DASH
    sel = (p.column("dataset") == BLUES) & np.isfinite(p.severity).all(1)
    if not sel.any():
        return DASH
    m = severity_metrics(p.truth_severity[sel], p.severity[sel])
    return f"{_f(m['kappa'])} / {_f(m.get('kappa_argmax'))}"  # the median level (what analyze shows) / argmax


def blues_finding_f1(p: Preds, name: str = "b_lines") -> str:
    from pocovid.evaluation import finding_metrics

    if p.findings is None or p.truth_findings is None or name not in p.finding_names:
        return DASH
    j = p.finding_names.index(name)
    sel = (p.column("dataset") == BLUES) & np.isfinite(p.findings[:, j])
    if not sel.any():
        return DASH
    return _f(finding_metrics(p.truth_findings[sel, j:j + 1], p.findings[sel, j:j + 1], [name])[name]["f1"])


def wall_memory(info: dict) -> str:
    """The run's wall time and peak memory. A call that resumed an earlier one's folds (`--final`
    added afterwards, or a stopped run) keeps that call's timings under `earlier`: the run took both."""
    calls, timings = [], info.get("timings")
    while isinstance(timings, dict):
        calls.append(timings)
        timings = timings.get("earlier")
    totals = [c.get("total_s") for c in calls]
    peaks = [c["peak_memory_gb"] for c in calls if isinstance(c.get("peak_memory_gb"), (int, float))]  # GB
    wall = f"{sum(totals) / 60:.1f} min" if totals and all(isinstance(t, (int, float)) for t in totals) else DASH
    return f"{wall} / {max(peaks):.2f} GB" if peaks else f"{wall} / {DASH}"


ROWS = (  # (name, target, mode of the run it reads, function of (run, exam method))
    ("POCUS k-fold convex clips: BA / COVID sens / spec", ">=.85/.85/.95", "kfold",
     lambda r, m: pocus_convex(r.preds)),
    ("BLUES k-fold patients COVID-19 vs not: acc / AUC", ">=.82 / .88", "kfold",
     lambda r, m: _acc_auc(blues_exams(r.preds, m))),
    ("LODO POCUS -> BLUES patients: COVID AUC", ">=.75", "lodo",
     lambda r, m: _f((blues_exams(r.preds, m) or {}).get("auc"))),
    ("  same, patients of the model's classes only (no 'other')", "", "lodo",
     lambda r, m: _f((blues_exams(r.preds, m, model_classes_only=True) or {}).get("auc"))),
    ("LODO BLUES -> POCUS convex clips: BA / sens / spec", "", "lodo", lambda r, m: pocus_convex(r.preds)),
    ("LOSO POCUS convex clips: BA / sens / spec", "", "loso", lambda r, m: pocus_convex(r.preds)),
    ("BLUES severity per video: weighted kappa, median / argmax", ">=.6", "kfold",
     lambda r, m: blues_severity_kappa(r.preds)),
    ("BLUES B-lines per video: F1", ">=.8", "kfold", lambda r, m: blues_finding_f1(r.preds)),
    ("kfold run: wall / peak memory", "<=30 min / 4 GB", "kfold", lambda r, m: wall_memory(r.info)),
)


def _acc_auc(block: dict | None) -> str:
    return DASH if not block else f"{_f(block.get('accuracy'))} / {_f(block.get('auc'))}"


def table(runs: list[Run], exam_method: str = "mean", with_baseline: bool = True) -> str:
    columns: dict[str, dict[str, Run]] = {}
    for r in runs:
        columns.setdefault(r.label, {})[r.mode] = r
        if with_baseline:
            b = baseline(r)
            if b is not None:
                columns.setdefault(b.label, {})[r.mode] = replace(b, info={})
    head = ["evaluation (out of fold)", "target", *columns]
    body = []
    for name, target, mode, fn in ROWS:
        cells = [fn(col[mode], exam_method) if mode in col else DASH for col in columns.values()]
        body.append([name, target, *cells])
    ws = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, ws)), "  ".join("-" * w for w in ws)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, ws)) for r in body]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="[LABEL[/MODE]=]RUN folder (kfold, lodo, loso)")
    ap.add_argument("--exam-method", default="mean",
                    help="clips -> patient: mean, max, noisy_or, or a combiner fitted out of fold: logistic, "
                         "logistic_signs (default mean)")
    ap.add_argument("--no-baseline", action="store_true", help="no frozen-trunk logistic regression columns")
    args = ap.parse_args(argv)
    from pocovid.models.exam import EXAM_METHODS

    if args.exam_method not in EXAM_METHODS:
        print(f"error: --exam-method: one of {', '.join(EXAM_METHODS)}", file=sys.stderr)
        return 2
    runs = [load_run(s) for s in args.runs]
    for r in runs:
        base = "" if args.no_baseline or r.trunk_file else "  (no cached features of the frozen trunk: no baseline)"
        n_folds = len({c["fold"] for c in r.preds.clips})
        print(f"{r.label} [{r.mode}, {n_folds} folds]: {r.path}, {len(r.preds.clips)} clips, "
              f"targets {'yes' if r.preds.truth_severity is not None else 'no'}{base}")
    print(f"patients: {args.exam_method} of clip probabilities\n" if not args.exam_method.startswith("logistic")
          else f"patients: {args.exam_method} combiner, fitted on the other folds' exams\n")
    print(table(runs, args.exam_method, not args.no_baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
