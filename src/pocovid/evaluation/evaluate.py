"""Scoring a trained model on any labelled folder (an external test set, a hospital's own data)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pocovid.errors import PocovidError


def evaluate_folder(model_spec: str | os.PathLike, root: str | os.PathLike | list,
                    out_dir: str | os.PathLike | None = None, *, probes=None, classes=None,
                    aggregation: str = "mean", exam_aggregation: str | None = None, rate_hz: float | None = None,
                    max_frames: int | None = None, progress: bool = True) -> dict:
    """Predict every labelled recording under `root` (layouts of `pocovid data index`), compute frame-,
    video- and exam-level metrics (and, for a model with findings / severity heads, those targets per
    recording where the data know them), and write them to `out_dir` (metrics.json, predictions.csv,
    patients.csv, plots). `exam_aggregation`: clips -> exam (mean, max, noisy_or); None: the model
    file's own exam method (`pocovid.models.exam.exam_method_of`), the call `pocovid exam` makes.

    Recordings whose label is not one of the model's classes (or of `classes`), and recordings that
    cannot be read, are skipped and listed in `metrics["skipped"]`. `root` may be a list of folders:
    they are indexed together (`pocovid.data.combine`), and each prediction row names its dataset and exam."""
    from pocovid.data import load_index
    from pocovid.data.labels import parse_classes, parse_probes
    from pocovid.evaluation.metrics import evaluation_result, video_metrics
    from pocovid.evaluation.report import write_evaluation
    from pocovid.inference import load, predict_recording
    from pocovid.models.adaptation import adapt_clip_probs, adaptation_of

    model = load(model_spec)
    model_classes = list(model.classes)
    wanted = parse_classes(classes) if classes else model_classes
    unknown = [c for c in wanted if c not in model_classes]
    if unknown:
        raise PocovidError(f"class(es) {', '.join(unknown)} not predicted by this model "
                           f"(it knows {', '.join(model_classes)})")
    idx = load_index(root if isinstance(root, (str, os.PathLike)) else list(root),
                     probes=parse_probes(probes) if probes else None)
    several = len(idx.datasets()) > 1
    sampling = model.input_config  # frames sampled as the model's training sampled them, unless told
    rate = rate_hz if rate_hz is not None else sampling.rate_hz
    mx = max_frames if max_frames is not None else sampling.max_frames
    skipped = [f"{p}: {why}" for p, why in idx.failures] + [f"{p}: {why}" for p, why in idx.skipped]
    ys, probs, clip_ids, rows = [], [], [], []
    items = []
    for it in idx.items:
        if it.label not in wanted:
            skipped.append(f"{it.path}: label '{it.label}' is not among the evaluated classes ({', '.join(wanted)})")
        else:
            items.append(it)
    if not items:
        raise PocovidError(f"{_shown(root)}: no labelled recording of the classes {', '.join(wanted)} to evaluate")
    done, rec_findings, rec_severity = [], [], []
    for ci, it in enumerate(tqdm(items, desc="evaluate", unit="clip", disable=not progress)):
        try:
            pred = predict_recording(model, idx.abspath(it), rate, mx)
        except PocovidError as e:
            skipped.append(str(e))
            continue
        p = pred.probs
        ys.extend([model_classes.index(it.label)] * len(p))
        probs.append(p)
        clip_ids.extend([ci] * len(p))
        clip_p = adapt_clip_probs(model, _aggregate(p, aggregation))  # a site adaptation acts on clips only
        done.append((it, clip_p))
        rec_findings.append(_recording_mean(pred.outputs, "findings"))
        rec_severity.append(_recording_mean(pred.outputs, "severity"))
        rows.append({"path": it.path, "label": it.label, "predicted": model_classes[int(np.argmax(clip_p))],
                     **{f"p_{c}": round(float(v), 4) for c, v in zip(model_classes, clip_p)},
                     "patient": it.patient, **({"dataset": it.dataset, "exam": it.exam} if several else {}),
                     "probe": it.probe, "n_frames": len(p),
                     "member_spread": round(float(pred.member_probs.mean(0).std(0).mean()), 4),
                     **_target_columns(model, rec_findings[-1], rec_severity[-1])})
    if not probs:
        raise PocovidError(f"{_shown(root)}: none of the {len(items)} recordings could be read")
    metrics = evaluation_result(np.array(ys), np.concatenate(probs), np.array(clip_ids), model_classes,
                                method=aggregation)
    if adaptation_of(model):  # video metrics of the adapted clip probabilities; frame metrics stay raw
        metrics["video"] = video_metrics([model_classes.index(it.label) for it, _ in done],
                                         np.stack([cp for _, cp in done]), list(range(len(done))), model_classes)
        metrics["video"]["n_frames"] = len(ys)
        metrics["adaptation"] = adaptation_of(model)
    metrics.update(_target_metrics(model, [it for it, _ in done], rec_findings, rec_severity))
    exams = _exam_rows(done, model, exam_aggregation, rec_findings, rec_severity)
    metrics["exams"] = exams["metrics"]
    metrics["skipped"] = skipped
    metrics["model"] = str(model_spec)
    metrics["sampling"] = {"rate_hz": rate, "max_frames": mx, "crop": sampling.crop}
    if out_dir is not None:
        write_evaluation(Path(out_dir), metrics=metrics, clip_table=rows, labels=model_classes, skipped=skipped,
                         exam_table=exams["rows"])
    return metrics


def _recording_mean(outputs, name: str) -> np.ndarray | None:
    """A head's probabilities (frames, members, K) of one recording -> (K,), mean over frames and
    members; None when the model has no such head (a model file from before the multi-task heads)."""
    v = getattr(outputs, name, None)
    if v is None:
        return None
    v = np.asarray(v, dtype=float)
    return v.reshape(-1, v.shape[-1]).mean(axis=0) if v.size else None


def _finding_names(model) -> list[str]:
    return [str(f) for f in (getattr(model, "findings", None) or [])]


def _target_columns(model, findings: np.ndarray | None, severity: np.ndarray | None) -> dict:
    """predictions.csv columns of the targets: f_<finding> probabilities, severity (the ordinal
    head's median level, `models.outputs.severity_level`, as `analyze` gives it) and
    severity_expected (sum_k k p_k)."""
    from pocovid.models.outputs import severity_level

    out = {}
    if findings is not None:
        names = _finding_names(model) or [str(j) for j in range(len(findings))]
        out.update({f"f_{n}": round(float(v), 4) for n, v in zip(names, findings)})
    if severity is not None:
        out["severity"] = severity_level(severity)
        out["severity_expected"] = round(float(np.dot(np.arange(len(severity)), severity / severity.sum())), 4)
    return out


def _target_metrics(model, items: list, findings: list, severity: list) -> dict:
    """{"findings": finding_metrics, "severity": severity_metrics} per recording against the items'
    known findings; only the heads the model has (an empty dict for a diagnosis-only model)."""
    from pocovid.evaluation.targets import SEVERITY_LEVELS, finding_metrics, severity_metrics

    out: dict = {}
    if items and all(f is not None for f in findings):
        names = _finding_names(model) or [str(j) for j in range(len(findings[0]))]
        truth = np.array([[_yes_no(getattr(it.findings, n, None)) for n in names] for it in items], dtype=float)
        out["findings"] = finding_metrics(truth, np.stack(findings), names)
    if items and all(s is not None for s in severity) and len(severity[0]) == len(SEVERITY_LEVELS):
        truth = np.array([np.nan if it.findings.severity is None else it.findings.severity for it in items])
        out["severity"] = severity_metrics(truth, np.stack(severity))
    return out


def _yes_no(v) -> float:
    return np.nan if v is None else float(bool(v))


def _exam_rows(done: list, model, method: str | None, findings: list, severity: list) -> dict:
    """{"metrics": exam_metrics, "rows": exam_table rows (+ patient, dataset)} of the read recordings;
    an exam's label is its recordings' patient-level label (`pocovid.data.index.exam_label`). `method`
    None: the model file's exam method, with its fitted parameters and, for the methods that read the
    signs, the recordings' findings and severity (mean when they are missing)."""
    from pocovid.data.index import exam_label
    from pocovid.evaluation.targets import exam_metrics, exam_table
    from pocovid.models.exam import SIGN_METHODS, exam_method_of

    classes = list(model.classes)
    exam_ids = np.array([it.exam or it.patient for it, _ in done])
    clip_p = np.stack([p for _, p in done])
    groups: dict[str, list] = {}
    for it, _ in done:
        groups.setdefault(it.exam or it.patient, []).append(it)
    labels = {ex: exam_label(its) for ex, its in groups.items()}
    extra = {"patient": [it.patient for it, _ in done], "dataset": [it.dataset for it, _ in done]}
    params, source = None, "given"
    if method is None:
        method, params, source = exam_method_of(model)
    combiner = {"params": params}
    if method in SIGN_METHODS:
        if any(f is None for f in findings) or any(s is None for s in severity):
            method, combiner, source = "mean", {}, f"default: the model file's {method} needs findings and severity"
        else:
            combiner.update(findings=np.stack(findings), severity=np.stack(severity))
    metrics = exam_metrics(exam_ids, clip_p, labels, classes, method=method, **combiner)
    metrics["method_source"] = source
    return {"metrics": metrics,
            "rows": exam_table(exam_ids, clip_p, labels, classes, method=method, extra=extra, **combiner)}


def _aggregate(p: np.ndarray, method: str) -> np.ndarray:
    from pocovid.evaluation.metrics import aggregate_frames

    _, clip_p = aggregate_frames(p, np.zeros(len(p), int), method)
    return clip_p[0]


def _shown(root) -> str:
    return str(root) if isinstance(root, (str, os.PathLike)) else ", ".join(map(str, root))
