"""A small model trained in seconds on phantom clips: for tests and benchmarks when no trained
model file is at hand. Pretrained frozen trunk (offline ImageNet weights), heads fitted on trunk
features of phantom frames of each class, plus the feature density the OOD guard reads.

Never a clinical model: it has only seen synthetic images."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def phantom_frames(size: int, seeds=(0, 1, 2), n_frames: int = 8, width: int = 256, height: int = 224,
                   labels=("covid", "pneumonia", "regular"), groups: bool = False):
    """(N, size, size) grey model-size crops of phantom clips and their class index in `labels`,
    prepared as `analyze` prepares frames (scan region of the clip, crop, resize, grey)."""
    from pocovid.phantom import make_phantom
    from pocovid.region import detect_scan_region, resize_frame
    from pocovid.training.frames import to_grey

    xs, ys, gs = [], [], []
    for li, label in enumerate(labels):
        for s in seeds:
            p = make_phantom(label=label, n_frames=n_frames, width=width, height=height, overlays=bool(s % 2),
                             fps=10.0, seed=int(s), probe="convex" if s % 3 else "linear")
            region = detect_scan_region(p.frames)
            for f in p.frames:
                xs.append(to_grey(resize_frame(region.crop(f), size)))
                ys.append(li)
                gs.append(int(s))
    if groups:
        return np.stack(xs), np.array(ys), np.array(gs)
    return np.stack(xs), np.array(ys)


def quick_phantom_model(size: int = 96, n_heads: int = 2, steps: int = 120, seed: int = 0,
                        classes=("covid", "pneumonia", "regular"), seeds=(0, 1, 2, 3, 4, 5), n_frames: int = 6):
    """A `FrameClassifier` (efficientnet_lite0, pretrained trunk) whose heads are fitted on phantom
    frames at `size` pixels; `meta["extra"]["feature_density"]` is set from the same frames."""
    from pocovid.analysis.ood import FeatureDensity, fit_feature_density
    from pocovid.models import create_model
    from pocovid.training.frames import grey_to_input

    torch.manual_seed(seed)
    model = create_model("efficientnet_lite0", list(classes), n_heads=n_heads, pretrained=True)
    model.input_size = size
    grey, y, groups = phantom_frames(size, seeds=seeds, n_frames=n_frames, labels=classes, groups=True)
    model.eval()
    with torch.no_grad():
        h = torch.cat([model.forward_trunk(model.normalize(grey_to_input(grey[i:i + 64])))
                       for i in range(0, len(grey), 64)])
    yt = torch.from_numpy(y)
    rng = np.random.default_rng(seed)
    for m, head in enumerate(model.heads):
        head.train()
        opt = torch.optim.Adam(head.parameters(), lr=2e-3, weight_decay=1e-4)
        for _ in range(steps):
            b = torch.from_numpy(rng.choice(len(y), size=min(32, len(y)), replace=False))
            loss = F.cross_entropy(head(h[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
    model.eval()
    model.training_config = {"size": size, "rate_hz": None, "crop": True}
    pooled = h.float().mean((2, 3)).numpy()
    density = fit_feature_density(pooled)
    # quantiles of d^2 on frames the density did not see (cross-fitted over phantom "patients"):
    # with so few frames, in-sample quantiles would make every new clip look far away
    held = []
    for g in np.unique(groups):
        fd = FeatureDensity(fit_feature_density(pooled[groups != g]))
        held.append(fd.d2(pooled[groups == g]))
    held = np.concatenate(held)
    density["d2_train"] = {name: float(np.percentile(held, q)) for name, q in
                           (("q50", 50), ("q95", 95), ("q99", 99), ("q999", 99.9))}
    model.meta = {"extra": {"feature_density": density},
                  "training_config": model.training_config, "source": "quick phantom model (tests only)"}
    return model
