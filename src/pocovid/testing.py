"""Helpers for tests and benchmarks, never for clinical use: nothing in the clinical package imports
this module (tests/test_layout.py checks).

- `quick_phantom_model`, `phantom_frames`: a small model trained in seconds on phantom clips, for
  when no trained model file is at hand. Pretrained frozen trunk (offline ImageNet weights), heads
  fitted on trunk features of phantom frames of each class, plus the feature density the OOD guard
  reads. Never a clinical model: it has only seen synthetic images.
- `blank`, `uniform_noise`, `gaussian_noise`, `text_screenshot`, `cardiac_like`, `abdominal_like`,
  `natural_images`, `generated_inputs`: inputs that are NOT lung ultrasound, generated on the spot:
  what the out-of-distribution guard must catch (tests and benchmarks/ood.py). Every image is RGB
  uint8 (H, W, 3).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# ------------------------------------------------------------------------------- quick model


def phantom_frames(size: int, seeds=(0, 1, 2), n_frames: int = 8, width: int = 256, height: int = 224,
                   labels=("covid", "pneumonia", "regular"), groups: bool = False):
    """(N, size, size) grey model-size crops of phantom clips and their class index in `labels`,
    prepared as `analyze` prepares frames (scan region of the clip, crop, resize, grey)."""
    from pocovid.models import InputConfig
    from pocovid.phantom import make_phantom
    from pocovid.region import detect_scan_region

    cfg = InputConfig(size=size)

    xs, ys, gs = [], [], []
    for li, label in enumerate(labels):
        for s in seeds:
            p = make_phantom(label=label, n_frames=n_frames, width=width, height=height, overlays=bool(s % 2),
                             fps=10.0, seed=int(s), probe="convex" if s % 3 else "linear")
            region = detect_scan_region(p.frames)
            for f in p.frames:
                xs.append(cfg.pixels(region.crop(f)))
                ys.append(li)
                gs.append(int(s))
    if groups:
        return np.stack(xs), np.array(ys), np.array(gs)
    return np.stack(xs), np.array(ys)


def quick_phantom_model(size: int = 96, n_heads: int = 2, steps: int = 120, seed: int = 0,
                        classes=("covid", "pneumonia", "regular"), seeds=(0, 1, 2, 3, 4, 5), n_frames: int = 6):
    """A `FrameClassifier` (efficientnet_lite0, pretrained trunk) whose heads are fitted on phantom
    frames at `size` pixels; `meta["extra"]["feature_density"]` is set from the same frames."""
    from pocovid.models import FeatureDensity, create_model, fit_feature_density

    torch.manual_seed(seed)
    model = create_model("efficientnet_lite0", list(classes), n_heads=n_heads, pretrained=True)
    model.input_size = size
    grey, y, groups = phantom_frames(size, seeds=seeds, n_frames=n_frames, labels=classes, groups=True)
    model.eval()
    with torch.no_grad():
        h = torch.cat([model.forward_trunk(model.input_tensor(grey[i:i + 64]))
                       for i in range(0, len(grey), 64)])
    yt = torch.from_numpy(y)
    rng = np.random.default_rng(seed)
    for head in model.heads:
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


# ------------------------------------------------------------------------------- non-lung inputs


def blank(h: int = 480, w: int = 640, value: int = 0) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def uniform_noise(h: int = 480, w: int = 640, seed: int = 0, colour: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if colour:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.repeat(rng.integers(0, 256, (h, w, 1), dtype=np.uint8), 3, axis=2)


def gaussian_noise(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = np.clip(rng.normal(110, 45, (h, w)), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


_WORDS = ("patient", "report", "findings", "lung", "ultrasound", "bilateral", "pleural", "normal",
          "the", "of", "and", "was", "with", "no", "evidence", "impression", "date", "exam", "view")


def text_screenshot(h: int = 600, w: int = 800, seed: int = 0, dark: bool = False) -> np.ndarray:
    """A screenshot of a document or an e-mail: lines of text on a light (or dark-mode) background."""
    rng = np.random.default_rng(seed)
    bg, fg = ((30, 30, 34), (220, 220, 220)) if dark else ((250, 250, 250), (20, 20, 20))
    img = np.full((h, w, 3), bg, np.uint8)
    cv2.rectangle(img, (0, 0), (w, 40), (60, 90, 160) if not dark else (50, 50, 60), -1)  # title bar
    cv2.putText(img, "Report - Lung ultrasound", (12, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    y = 75
    while y < h - 10:
        x = 15
        while True:
            word = _WORDS[rng.integers(len(_WORDS))]
            (tw, _), _ = cv2.getTextSize(word, cv2.FONT_HERSHEY_SIMPLEX, 0.55, 1)
            if x + tw > w - 15:
                break
            cv2.putText(img, word, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55, fg, 1, cv2.LINE_AA)
            x += tw + 9
        y += 24
    return img


def _fan(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convex-probe fan mask and polar coordinates (depth 0..1, angle -1..1) of every pixel."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w / 2, -0.25 * h
    r = np.hypot(xx - cx, yy - cy)
    ang = np.arctan2(xx - cx, yy - cy)
    r0, r1, a = 0.3 * h, 1.2 * h, 0.6
    depth = (r - r0) / (r1 - r0)
    inside = (depth >= 0) & (depth <= 1) & (np.abs(ang) <= a)
    return inside, depth, ang / a


def _speckle(h: int, w: int, rng: np.random.Generator, sigma: float = 1.2) -> np.ndarray:
    z = rng.normal(size=(h, w)) + 1j * rng.normal(size=(h, w))
    s = np.abs(ndimage.gaussian_filter(z.real, sigma) + 1j * ndimage.gaussian_filter(z.imag, sigma))
    return s / s.mean()


def cardiac_like(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    """A synthetic apical four-chamber-like view: a fan with four large anechoic chambers and
    bright, thick walls and septa (nothing of a lung's pleura, A- or B-lines)."""
    rng = np.random.default_rng(seed)
    inside, depth, lat = _fan(h, w)
    tissue = 0.55 + 0.1 * rng.normal(size=(h, w))
    img = 70 * tissue
    chambers = [(-0.35, 0.35, 0.28, 0.22), (0.35, 0.35, 0.26, 0.2), (-0.33, 0.72, 0.25, 0.15), (0.33, 0.72, 0.24, 0.15)]
    walls = np.zeros((h, w), np.float32)
    for cx, cy, rx, ry in chambers:
        e = ((lat - cx) / rx) ** 2 + ((depth - cy) / ry) ** 2
        walls = np.maximum(walls, np.exp(-((np.sqrt(e) - 1.08) / 0.08) ** 2))
        img = np.where(e < 1, 6.0, img)
    img = img + 190 * walls
    img = img * _speckle(h, w, rng) * inside
    g = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def abdominal_like(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    """A synthetic liver-like view: homogeneous mid-grey parenchyma filling the fan from the top,
    a dark tubular vessel, a bright curved diaphragm deep down (no pleural line near the probe)."""
    rng = np.random.default_rng(seed)
    inside, depth, lat = _fan(h, w)
    img = 95 + 8 * ndimage.gaussian_filter(rng.normal(size=(h, w)), 12) * 10
    vessel = np.exp(-((depth - 0.45 - 0.12 * lat) / 0.05) ** 2)
    img = img * (1 - 0.9 * vessel)
    diaphragm = np.exp(-((depth - 0.85 + 0.1 * lat ** 2) / 0.02) ** 2)
    img = img + 150 * diaphragm
    img = img * _speckle(h, w, rng, 1.0) * inside * (1 - 0.35 * depth)
    g = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def natural_images() -> dict[str, np.ndarray]:
    """The photographs scikit-image ships (no download), as RGB uint8."""
    from skimage import data

    from pocovid.media import to_rgb8

    out = {}
    for name in ("astronaut", "chelsea", "coffee", "camera", "rocket", "coins", "moon", "page", "text",
                 "hubble_deep_field", "immunohistochemistry", "retina", "cat", "horse", "grass", "gravel"):
        fn = getattr(data, name, None)
        if fn is None:
            continue
        try:
            a = np.asarray(fn())
        except Exception:  # noqa: BLE001, S112 - a data file that needs a download (pooch) is not available offline
            continue
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        out[name] = to_rgb8(a)
    return out


def generated_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Every generated non-lung input, by name."""
    return {
        "blank_black": blank(value=0), "blank_grey": blank(value=128), "blank_white": blank(value=255),
        "uniform_noise": uniform_noise(seed=seed), "uniform_noise_colour": uniform_noise(seed=seed, colour=True),
        "gaussian_noise": gaussian_noise(seed=seed), "text_screenshot": text_screenshot(seed=seed),
        "text_screenshot_dark": text_screenshot(seed=seed, dark=True), "cardiac_like": cardiac_like(seed=seed),
        "abdominal_like": abdominal_like(seed=seed),
    }
