"""Scoring a trained model on any labelled folder (an external test set, a hospital's own data)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pocovid.errors import PocovidError


def evaluate_folder(model_spec: str | os.PathLike, root: str | os.PathLike | list,
                    out_dir: str | os.PathLike | None = None, *, probes=None, classes=None,
                    aggregation: str = "mean", rate_hz: float | None = None,
                    max_frames: int | None = None, progress: bool = True) -> dict:
    """Predict every labelled recording under `root` (layouts of `pocovid data index`), compute frame-
    and video-level metrics, and write them to `out_dir` (metrics.json, predictions.csv, plots).

    Recordings whose label is not one of the model's classes (or of `classes`), and recordings that
    cannot be read, are skipped and listed in `metrics["skipped"]`. `root` may be a list of folders:
    they are indexed together (`pocovid.data.combine`), and each prediction row names its dataset and exam."""
    from pocovid.data import load_index
    from pocovid.data.labels import parse_classes, parse_probes
    from pocovid.evaluation.metrics import evaluation_result
    from pocovid.evaluation.report import write_evaluation
    from pocovid.inference import load, predict_recording

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
        clip_p = _aggregate(p, aggregation)
        rows.append({"path": it.path, "label": it.label, "predicted": model_classes[int(np.argmax(clip_p))],
                     **{f"p_{c}": round(float(v), 4) for c, v in zip(model_classes, clip_p)},
                     "patient": it.patient, **({"dataset": it.dataset, "exam": it.exam} if several else {}),
                     "probe": it.probe, "n_frames": len(p),
                     "member_spread": round(float(pred.member_probs.mean(0).std(0).mean()), 4)})
    if not probs:
        raise PocovidError(f"{_shown(root)}: none of the {len(items)} recordings could be read")
    metrics = evaluation_result(np.array(ys), np.concatenate(probs), np.array(clip_ids), model_classes,
                                method=aggregation)
    metrics["skipped"] = skipped
    metrics["model"] = str(model_spec)
    metrics["sampling"] = {"rate_hz": rate, "max_frames": mx, "crop": sampling.crop}
    if out_dir is not None:
        write_evaluation(Path(out_dir), metrics=metrics, clip_table=rows, labels=model_classes, skipped=skipped)
    return metrics


def _aggregate(p: np.ndarray, method: str) -> np.ndarray:
    from pocovid.evaluation.metrics import aggregate_frames

    _, clip_p = aggregate_frames(p, np.zeros(len(p), int), method)
    return clip_p[0]


def _shown(root) -> str:
    return str(root) if isinstance(root, (str, os.PathLike)) else ", ".join(map(str, root))
