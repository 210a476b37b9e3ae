"""Patient-level cross-validation on real data, side by side with the reference baseline.

    python benchmarks/train_cv.py ../shared/data/pocus --out runs/bench [--final] [--seed 0]

1. Splits the convex 3-class set into 5 patient-grouped folds (`pocovid data split`).
2. Baseline: the frozen ImageNet backbone's pooled features + logistic regression, frames at
   3 Hz (<= 30 per clip), clip = mean of frame probabilities; same folds.
3. pocovid's training (`pocovid train`), with `--final` the shipped model too.
Prints video-level balanced accuracy, COVID sensitivity / specificity for both, wall time of the
whole training run and peak memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np


def baseline(frames, model, folds: np.ndarray) -> dict:
    """Frozen full backbone (global-pooled last stage) + logistic regression, per fold
    (`pocovid.evaluation.baseline.logistic_oof`, as benchmarks/cross_site.py)."""
    import torch

    from pocovid.evaluation import evaluation_result
    from pocovid.evaluation.baseline import logistic_oof

    feats = []
    with torch.no_grad():
        for i in range(0, len(frames.frames), 64):
            x = model.input_tensor(frames.frames[i:i + 64])  # cached grey pixels -> the model's input
            feats.append(model.forward_trunk(x).mean((2, 3)).numpy())  # trunk = the whole backbone
    X = np.concatenate(feats)
    y = frames.y
    probs = logistic_oof(X, y, folds, len(frames.classes))
    return evaluation_result(y, probs, frames.clip_of, frames.classes, folds=folds)


def line(name: str, m: dict) -> str:
    v = m["video"]
    cov = v["per_class"].get("covid", {})
    return (f"{name:<28} video BA {v['balanced_accuracy']:.3f}  acc {v['accuracy']:.3f}  "
            f"COVID sens {cov.get('sensitivity') or 0:.3f} spec {cov.get('specificity') or 0:.3f}  "
            f"| frame BA {m['frame']['balanced_accuracy']:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--final", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args(argv)
    if not (args.root / "pocus_videos").is_dir() and not args.root.is_dir():
        print(f"error: {args.root}: no such dataset folder", file=sys.stderr)
        return 2
    import torch

    from pocovid.data import index_dataset, patient_folds
    from pocovid.models import create_model
    from pocovid.training import TrainConfig, train_run

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    idx = index_dataset(args.root, probes=["convex"], classes=["covid", "pneumonia", "regular"])
    splits = patient_folds(idx, n_folds=5, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    splits.save(args.out / "splits.json")
    cfg = TrainConfig(seed=args.seed)
    res = train_run(splits, args.out, cfg, final=args.final, root=args.root, progress=False)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"data: {len(res.frames.clips)} clips, {len(res.frames.frames)} frames, "
          f"{len({c['patient'] for c in res.frames.clips})} patients, 5 patient-grouped folds (seed {args.seed})")
    if not args.no_baseline:
        from pocovid.models import create_backbone

        n_stages = len(create_backbone(cfg.backbone, pretrained=False).stages)
        base_model = create_model(cfg.backbone, list(cfg.classes), cut=n_stages)
        print(line("baseline (frozen + LR)", baseline(res.frames, base_model, res.frames.fold)))
    print(line(f"pocovid ({cfg.backbone})", res.metrics))
    f = res.metrics.get("folds", {}).get("video", {})
    if f:
        ba = f["balanced_accuracy"]
        print(f"{'':<28} video BA over folds {ba['mean']:.3f} +- {ba['std']:.3f}")
    t = res.timings
    print(f"wall time: {wall:.0f} s (prepare {t.get('prepare_s', 0):.0f} s, cv {t.get('cv_s', 0):.0f} s"
          f", final {t.get('final_s', 0):.0f} s); peak memory (RSS) {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
