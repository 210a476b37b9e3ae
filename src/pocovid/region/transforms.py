"""`CropToScanRegion`: a MONAI-style transform (a plain callable, usable in `monai.transforms.Compose`).

Works on numpy arrays and torch tensors (MONAI's MetaTensor included), channel-last (H, W, C),
channel-first (C, H, W, MONAI's layout) or grey (H, W). MONAI itself is not imported.
"""

from __future__ import annotations

import numpy as np

from pocovid.region.scan import ScanRegion


class CropToScanRegion:
    """Crop an image to `region.box` and zero it outside `region.mask`.

    `CropToScanRegion(region)(img)`, or `CropToScanRegion()(img, region)` when the region
    changes per clip. `channel_first=None` guesses the layout from the shape.
    """

    def __init__(self, region: ScanRegion | None = None, channel_first: bool | None = None):
        self.region = region
        self.channel_first = channel_first

    def __call__(self, img, region: ScanRegion | None = None):
        region = region or self.region
        if region is None:
            raise ValueError("CropToScanRegion needs a ScanRegion (at construction or per call)")
        hw = region.frame_size
        shape = tuple(img.shape)
        if len(shape) == 2:
            cf = False
        elif self.channel_first is not None:
            cf = self.channel_first
        else:
            cf = shape[1:3] == hw and shape[:2] != hw
        size = shape[1:3] if cf else shape[:2]
        if size != hw:
            raise ValueError(f"image of size {size} does not match the region's frame size {hw}")
        x0, y0, x1, y1 = region.box
        m = region.crop_mask
        if cf:
            out = img[:, y0:y1, x0:x1]
            m = m[None]
        else:
            out = img[y0:y1, x0:x1]
            if len(shape) == 3:
                m = m[..., None]
        if region.is_full:
            return out.clone() if hasattr(out, "clone") else out.copy()
        if hasattr(out, "clone"):  # torch tensor
            import torch

            return out * torch.as_tensor(np.ascontiguousarray(m), device=out.device).to(out.dtype)
        return np.where(m, out, np.zeros((), out.dtype))
