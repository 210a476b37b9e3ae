"""Augmentation suited to lung ultrasound, composed from MONAI transforms.

Works on one grey frame as a (1, H, W) float array in [0, 255] (channel first, MONAI's
convention). Geometry stays plausible for a probe at the top of the image: small rotations and
shifts, horizontal flips; vertical flips (probe at the bottom) only when asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandAffine,
    RandFlip,
    RandGaussianSmooth,
    RandomizableTransform,
    RandScaleIntensity,
)
from scipy import ndimage


@dataclass
class AugmentConfig:
    rotate_deg: float = 10.0
    shift: float = 0.10  # fraction of the image size
    scale: float = 0.10
    hflip: bool = True
    vflip: bool = False  # the paper used it; it puts the probe at the bottom (measured, see model card)
    gain: float = 0.3  # intensity scale factor range +-
    gamma: tuple[float, float] = (0.7, 1.5)
    speckle: float = 0.15  # std of multiplicative noise
    blur_prob: float = 0.3
    sector_jitter_px: int = 6  # erode the sector edge by up to this many pixels


class RandSpeckle(RandomizableTransform):
    """Multiplicative, spatially correlated noise: speckle of another scanner or setting."""

    def __init__(self, std: float = 0.15, prob: float = 0.5):
        RandomizableTransform.__init__(self, prob)
        self.std = std
        self._field = None

    def randomize(self, shape) -> None:
        super().randomize(None)
        if self._do_transform:
            f = self.R.normal(1.0, self.std, size=shape).astype(np.float32)
            self._field = ndimage.gaussian_filter(f, sigma=(0, 0.7, 0.7)) if len(shape) == 3 else f

    def __call__(self, img, randomize: bool = True):
        img = np.asarray(img, dtype=np.float32)
        if randomize:
            self.randomize(img.shape)
        if not self._do_transform:
            return img
        return img * self._field


class RandSectorJitter(RandomizableTransform):
    """Erode the edge of the scan sector by a few pixels: region detection is never pixel exact."""

    def __init__(self, max_px: int = 6, prob: float = 0.5, threshold: float = 4.0):
        RandomizableTransform.__init__(self, prob)
        self.max_px, self.threshold = max_px, threshold
        self._px = 0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._px = int(self.R.randint(1, self.max_px + 1)) if self.max_px > 0 else 0

    def __call__(self, img, randomize: bool = True):
        img = np.asarray(img, dtype=np.float32)
        if randomize:
            self.randomize()
        if not self._do_transform or self._px == 0:
            return img
        inside = ndimage.binary_fill_holes(ndimage.uniform_filter(img[0], 5) > self.threshold)
        keep = ndimage.binary_erosion(inside, iterations=self._px)
        return img * keep[None]


def ultrasound_augmentation(cfg: AugmentConfig | None = None, size: int = 224, seed: int = 0) -> Compose:
    """The training augmentation as one MONAI `Compose` (call `.set_random_state(seed)` to reseed)."""
    cfg = cfg or AugmentConfig()
    t = [
        RandSectorJitter(cfg.sector_jitter_px, prob=0.5),
        RandAffine(prob=0.9, rotate_range=math.radians(cfg.rotate_deg), translate_range=(cfg.shift * size,) * 2,
                   scale_range=(cfg.scale, cfg.scale), padding_mode="zeros", mode="bilinear"),
    ]
    if cfg.hflip:
        t.append(RandFlip(prob=0.5, spatial_axis=1))
    if cfg.vflip:
        t.append(RandFlip(prob=0.5, spatial_axis=0))
    t += [
        RandScaleIntensity(factors=cfg.gain, prob=0.8),
        RandAdjustContrast(prob=0.5, gamma=cfg.gamma, retain_stats=True),
        RandSpeckle(cfg.speckle, prob=0.5),
        RandGaussianSmooth(sigma_x=(0.3, 1.2), sigma_y=(0.3, 1.2), prob=cfg.blur_prob),
    ]
    aug = Compose(t)
    aug.set_random_state(seed=seed)
    return aug


def augment_grey(frames: np.ndarray, aug: Compose) -> np.ndarray:
    """Apply `aug` to (N, H, W) uint8 grey frames, frame by frame; returns (N, H, W) uint8."""
    out = np.empty_like(frames)
    for i, f in enumerate(frames):
        a = aug(f[None].astype(np.float32))
        out[i] = np.clip(np.asarray(a)[0], 0, 255).astype(np.uint8)
    return out
