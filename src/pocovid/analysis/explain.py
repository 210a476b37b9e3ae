"""Why the model says what it says: class activation maps on the original frame.

- CAM (default): the heads end in global average pooling and one linear layer, so the map of
  class c is sum_k w[c, k] * A_k over the last feature map A (`FrameClassifier.class_activation_map`),
  averaged over the ensemble's heads. `FrameClassifier.infer` computes it for every class in the
  same pass that classifies the frames (no second model run).
- Grad-CAM (`explainer="gradcam"`): MONAI's `monai.visualize.GradCAM` on the whole model (its
  `forward` returns the mean logits) at `model.gradcam_target_layer(m)` of every head m; works for
  any layer and for models without the pooled linear head. MONAI leaves its hooks on the model;
  they are removed again here (a service keeps one model for many requests).

Maps live at the feature resolution over the cropped, resized model input. `heat_in_frame` maps
one back into the scan-region box of the ORIGINAL frame and zeroes it outside the region's mask.
"""

from __future__ import annotations

import contextlib

import cv2
import numpy as np

from pocovid.analysis.display import heat_lut
from pocovid.region import ScanRegion


@contextlib.contextmanager
def _scoped_hooks(model):
    """Remove every hook added to `model`'s modules inside the block (MONAI never removes its own)."""
    names = ("_forward_hooks", "_backward_hooks", "_forward_pre_hooks", "_backward_pre_hooks",
             "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
    before = {id(m): {n: set(getattr(m, n, {}) or {}) for n in names} for m in model.modules()}
    full = {id(m): getattr(m, "_is_full_backward_hook", None) for m in model.modules()}
    try:
        yield
    finally:
        for m in model.modules():
            for n in names:
                d = getattr(m, n, None)
                if d is None:
                    continue
                for key in [k for k in d if k not in before.get(id(m), {}).get(n, set())]:
                    del d[key]
            if hasattr(m, "_is_full_backward_hook"):
                m._is_full_backward_hook = full.get(id(m))


def gradcam_maps(model, x, class_index: int, layer: str | None = None) -> np.ndarray:
    """Grad-CAM (B, h, w) of class `class_index` for normalised input `x`, summed over the heads'
    target layers (= the mean of the heads' own Grad-CAMs, as the model's output is their mean),
    or at the module named `layer`; one forward and backward pass through MONAI's hooks."""
    import torch  # here, not at import: CAM (the default) on a model run from its graph needs no PyTorch
    from monai.visualize import GradCAM

    if layer is not None:
        if layer not in dict(model.named_modules()):
            from pocovid.errors import PocovidError

            raise PocovidError(f"no module {layer!r} in the model (e.g. {model.gradcam_target_layer(0)})")
        layers = [layer]
    else:
        layers = [model.gradcam_target_layer(m) for m in range(model.n_heads)]
    layers = list(dict.fromkeys(layers))  # a frozen-trunk target is shared by every head
    was_training = model.training
    with _scoped_hooks(model), torch.enable_grad():
        cam = GradCAM(nn_module=model, target_layers=layers)
        x = x.detach().clone().requires_grad_(True)  # lets gradients reach a layer in the frozen trunk
        _, acti, grad = cam.nn_module(x, class_idx=int(class_index))
        maps = []
        for a, g in zip(acti, grad):
            w = g.mean((2, 3), keepdim=True)
            maps.append(torch.relu((w * a).sum(1)))  # as monai's GradCAM.compute_map
        out = torch.stack(maps, 0).sum(0).detach()
    model.train(was_training)
    return out.cpu().numpy().astype(np.float32)


def heat_scale(cams: np.ndarray, q: float = 95.0) -> float:
    """A clip-wide scale for heatmaps: the `q`th percentile of the frames' peak positive values, so
    frames without evidence stay cool instead of every frame being stretched to its own max."""
    peaks = np.maximum(np.asarray(cams, np.float32).reshape(len(cams), -1).max(1), 0) if len(cams) else np.zeros(0)
    s = float(np.percentile(peaks, q)) if len(peaks) else 0.0
    return s if s > 1e-8 else 1.0


def heat_in_box(cam: np.ndarray, region: ScanRegion, scale: float = 1.0) -> np.ndarray:
    """(h, w) map -> (box_h, box_w) float32 in [0, 1] over the region's box, zero outside its mask."""
    x0, y0, x1, y1 = region.box
    m = cv2.resize(np.maximum(np.asarray(cam, np.float32), 0) / scale, (x1 - x0, y1 - y0),
                   interpolation=cv2.INTER_LINEAR)
    np.clip(m, 0, 1, out=m)
    if not region.is_full:
        m *= region.crop_mask
    return m


def heat_in_frame(cam: np.ndarray, region: ScanRegion, scale: float = 1.0) -> np.ndarray:
    """(h, w) map -> (H, W) float32 in [0, 1] on the original frame: the crop box gets the map
    resized to it, everything outside the scan-region mask is zero."""
    H, W = region.frame_size
    out = np.zeros((H, W), np.float32)
    x0, y0, x1, y1 = region.box
    out[y0:y1, x0:x1] = heat_in_box(cam, region, scale)
    return out


def mass_inside(cam: np.ndarray, region: ScanRegion) -> float:
    """Share of a map's positive heat mass, mapped to the crop box, that lies inside the region's
    mask (1.0 for a full-frame region)."""
    x0, y0, x1, y1 = region.box
    m = cv2.resize(np.maximum(np.asarray(cam, np.float32), 0), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    total = float(m.sum())
    if total <= 0:
        return float("nan")
    return float(m[region.crop_mask].sum() / total)


def blend(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, floor: float = 0.15) -> np.ndarray:
    """RGB `image` with `heat` ((H, W) in [0, 1]) overlaid in colour; pixels below `floor` stay as
    they were, the colour's opacity grows with the heat up to `alpha`. Returns a new array."""
    heat = np.asarray(heat, np.float32)
    if image.size == 0 or heat.size == 0:  # nothing to blend (OpenCV would divide by zero)
        return np.array(image, copy=True)
    h8 = cv2.convertScaleAbs(heat, alpha=255.0)  # saturating: [0, 1] -> 0..255
    colour = cv2.applyColorMap(h8, heat_lut()[:, None, :])  # the RGB look-up table (viridis): RGB out
    # numpy, not cv2.min/max: those take a 1x1 array for a scalar and break blendLinear on 1x1 images
    a = np.minimum(np.maximum((heat - floor) * (alpha / max(1 - floor, 1e-6)), 0.0), alpha).astype(np.float32)
    return cv2.blendLinear(np.ascontiguousarray(image), colour, 1.0 - a, a)


def scan_view(image: np.ndarray, region: ScanRegion, full_screen: bool = False) -> np.ndarray:
    """What key frames and the overlay video show of a frame: the scan region only (cut to its box,
    black outside its mask), so that names and dates burnt into the screen around it are not
    copied into the outputs; the whole frame with `full_screen`."""
    return np.array(image, copy=True) if full_screen or region.is_full else region.crop(image)


def overlay_frame(image: np.ndarray, cam: np.ndarray | None, region: ScanRegion, scale: float,
                  alpha: float = 0.5, outline: bool = True, full_screen: bool = False) -> np.ndarray:
    """The RGB frame with the map over its scan region (and the region's outline): the scan region
    only (`scan_view`), or the whole frame with `full_screen`."""
    x0, y0, x1, y1 = region.box
    out = scan_view(image, region, full_screen)
    ox, oy = (x0, y0) if full_screen or region.is_full else (0, 0)  # where the box lies in `out`
    if cam is not None:
        bh, bw = y1 - y0, x1 - x0
        out[oy:oy + bh, ox:ox + bw] = blend(out[oy:oy + bh, ox:ox + bw], heat_in_box(cam, region, scale), alpha)
    if outline and not region.is_full:
        draw_region_outline(out, region, offset=(ox - x0, oy - y0))
    return out


def draw_region_outline(image: np.ndarray, region: ScanRegion, colour=(255, 255, 255),
                        offset: tuple[int, int] = (0, 0)) -> None:
    """The region's outline on `image`, shifted by `offset` (x, y) (e.g. -box corner for a cropped view)."""
    th = max(1, round(max(image.shape[:2]) / 500))
    if region.polygon is not None:
        pts = np.round(np.asarray(region.polygon) - 0.5 + np.asarray(offset)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(image, [pts], True, colour, th, cv2.LINE_AA)
    else:
        cs, _ = cv2.findContours(region.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                 offset=tuple(int(v) for v in offset))
        cv2.drawContours(image, cs, -1, colour, th, cv2.LINE_AA)
