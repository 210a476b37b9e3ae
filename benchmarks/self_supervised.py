"""Does self-supervised adaptation of the trunk on the unlabelled frames of both datasets carry across sites?

    python benchmarks/self_supervised.py ../shared/data/pocus ../shared/data/covid-blues \
        --frames runs/cache/frames-KEY.npz --maps runs/cache/trunk-KEY.npy \
        --splits runs/splits/mt_k5.json runs/splits/mt_lodo.json runs/splits/mt_loso.json [--epochs 15]

Issue 11 lists it among the representations to measure "if it fits the CPU budget". It fits this way:
a fine-tuning run (`pocovid train --freeze 5`) has already cached the frozen stages' output (stem ..
stage 4: 80 x 14 x 14 maps) of every frame, clean and in 5 augmented copies (`--maps`, the
`trunk-KEY.npy` of that run's `--cache`; `--frames`, its `frames-KEY.npz`). Two copies of one frame are
two views of it, so SimSiam (Chen & He 2021: a projector and a predictor, the loss the negative cosine
between one view's prediction and the other view's stopped projection) trains a copy of stage 5 on
those maps, with no label, over the frames of both datasets. Unlabelled frames of the test folds take
part, as a clinic's own unlabelled recordings would (transductive adaptation); no label of theirs does.

Then both stage 5s, ImageNet's and the adapted one, go through the same frozen-feature probe as
benchmarks/representation.py (clip-mean pooled stage-5 features of the clean frames -> standardised
logistic regression, C by inner patient-grouped CV on the training folds only), on each split, and the
same rows are printed side by side.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from representation import CLASSES, probe_oof, scores  # noqa: E402


def _head(dim_in: int, dim: int = 256, pred: int = 64):
    from torch import nn

    projector = nn.Sequential(nn.Linear(dim_in, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                              nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False))
    predictor = nn.Sequential(nn.Linear(dim, pred, bias=False), nn.BatchNorm1d(pred), nn.ReLU(inplace=True),
                              nn.Linear(pred, dim))
    return projector, predictor


def simsiam_stage(stage, maps: np.ndarray, epochs: int, batch: int = 64, lr: float = 0.01, seed: int = 0):
    """A copy of `stage` trained by SimSiam on pairs of views of `maps` (V, N, C, h, w): each step takes
    `batch` frames and two different views of each. Returns the trained copy and the loss per epoch."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    stage = copy.deepcopy(stage).train()
    with torch.no_grad():
        dim_in = stage(torch.from_numpy(np.asarray(maps[0, :2], np.float32))).shape[1]
    projector, predictor = _head(dim_in)
    params = [{"params": stage.parameters(), "lr": lr * 0.1},  # the pretrained stage moves slowly
              {"params": projector.parameters()}, {"params": predictor.parameters()}]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    n_views, n = maps.shape[:2]
    losses, spreads = [], []
    for _ in range(epochs):
        order = rng.permutation(n)
        total, steps, spread = 0.0, 0, 0.0
        for i in range(0, n - batch + 1, batch):
            idx = np.sort(order[i:i + batch])
            v1 = rng.integers(0, n_views, len(idx))
            v2 = (v1 + rng.integers(1, n_views, len(idx))) % n_views  # another view of the same frame
            x1 = torch.from_numpy(np.stack([maps[v, j] for v, j in zip(v1, idx)]).astype(np.float32))
            x2 = torch.from_numpy(np.stack([maps[v, j] for v, j in zip(v2, idx)]).astype(np.float32))
            z1, z2 = projector(stage(x1).mean((2, 3))), projector(stage(x2).mean((2, 3)))
            p1, p2 = predictor(z1), predictor(z2)
            loss = -(F.cosine_similarity(p1, z2.detach()).mean() + F.cosine_similarity(p2, z1.detach()).mean()) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
            # collapse check: the per-dimension spread of the normalised projection (1/sqrt(dim) when healthy)
            spread += float(F.normalize(z1.detach(), dim=1).std(0).mean())
        losses.append(total / steps)
        spreads.append(spread / steps)
        print(f"  epoch {len(losses)}: loss {losses[-1]:.4f}, spread {spreads[-1]:.4f}", file=sys.stderr)
    return stage.eval(), losses, spreads


def stage_features(stage, maps0: np.ndarray, batch: int = 128) -> np.ndarray:
    """Global-average-pooled output of `stage` on the clean maps (N, C, h, w)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(maps0), batch):
            out.append(stage(torch.from_numpy(np.asarray(maps0[i:i + batch], np.float32))).mean((2, 3)).numpy())
    return np.concatenate(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs=2, help="the POCUS folder and the COVID-BLUES folder")
    ap.add_argument("--frames", type=Path, required=True, help="the fine-tuning run's frames-KEY.npz")
    ap.add_argument("--maps", type=Path, required=True, help="its trunk-KEY.npy: stage-4 maps, (1 + n_aug, N, C, h, w)")
    ap.add_argument("--splits", nargs="+", required=True, help="split files (kfold, lodo, loso) over the same clips")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path, help="also write the adapted stage 5's state_dict here (.pt)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")

    import torch

    from pocovid.data.splits import load_splits
    from pocovid.models.backbone import create_backbone
    from pocovid.training.frames import FrameSet
    from pocovid.training.supervision import clip_targets, index_lookup

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    frames = FrameSet.load(args.frames)
    maps = np.load(args.maps, mmap_mode="r")
    if maps.shape[1] != len(frames.frames):
        print(f"error: {args.maps}: {maps.shape[1]} frames, {args.frames} has {len(frames.frames)}", file=sys.stderr)
        return 1
    bb = create_backbone("efficientnet_lite0")
    k = bb.stage_names.index("stage5")
    if bb.stage_channels[k - 1] != maps.shape[2]:
        print(f"error: {args.maps}: {maps.shape[2]} channels; stage 5 takes {bb.stage_channels[k - 1]}",
              file=sys.stderr)
        return 1
    stage = bb.stages[k]
    print(f"{len(frames.clips)} clips, {maps.shape[1]} frames x {maps.shape[0]} views; SimSiam {args.epochs} epochs",
          file=sys.stderr)
    t0 = time.time()
    maps_ram = np.asarray(maps)  # 0.6 GB as float16: random access to a memmap would read the disk per frame
    adapted, losses, spreads = simsiam_stage(stage, maps_ram, args.epochs, lr=args.lr, seed=args.seed)
    t_ssl = time.time() - t0
    if args.save:
        torch.save({"stage5": adapted.state_dict(), "epochs": args.epochs, "lr": args.lr, "seed": args.seed,
                    "frames": str(args.frames), "maps": str(args.maps), "loss": losses}, args.save)
    feats = {"lite0 s5 (ImageNet)": stage_features(stage.eval(), maps_ram[0]),
             "lite0 s5 SimSiam": stage_features(adapted, maps_ram[0])}

    roots = {"pocus": args.roots[0], "covid-blues": args.roots[1]}
    n = len(frames.clips)
    lookup, _ = index_lookup(roots)
    t = clip_targets(frames.clips, lookup, CLASSES, ["b_lines"], "abnormal_only")
    keys = [(c["dataset"], c["rel"]) for c in frames.clips]
    groups = np.array([c["patient"] for c in frames.clips])
    yb = np.where(np.isfinite(t.findings[:, 0]), t.findings[:, 0], -1).astype(int)
    ys = np.where(np.isfinite(t.severity), t.severity, -1).astype(int)
    counts = np.bincount(frames.clip_of, minlength=n)[:, None]
    cols = [("pocus_ba", "POCUS BA"), ("pocus_sens", "sens"), ("pocus_spec", "spec"), ("blues_acc", "BLUES acc"),
            ("blues_auc", "AUC"), ("blues_bline_f1", "B-line F1"), ("blues_sev_kappa", "sev kappa")]
    for s in args.splits:
        split = load_splits(s)
        m = {(it.dataset, it.path): j for j, fold in enumerate(split.folds) for it in fold}
        folds = np.array([m.get(key, -1) for key in keys])
        print(f"\n{Path(s).stem}: clip-mean stage-5 features -> logistic regression (C by inner patient CV), "
              "out of fold")
        print(f"{'candidate':24s}" + "".join(f"{h:>11s}" for _, h in cols))
        for name, F in feats.items():
            X = np.zeros((n, F.shape[1]))
            np.add.at(X, frames.clip_of, F)
            X /= counts
            r = scores(probe_oof(X, t.y, folds, groups, 3), probe_oof(X, yb, folds, groups, 2),
                       probe_oof(X, ys, folds, groups, 4), t, frames)
            print(f"{name:24s}" + "".join(f"{r[k]:11.3f}" if k in r else f"{'-':>11s}" for k, _ in cols))
    print(f"\nSimSiam: {args.epochs} epochs in {t_ssl / 60:.1f} min; loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
          f"spread of the normalised projection {spreads[-1]:.4f} (collapse: 0; healthy: ~{1 / np.sqrt(256):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
