"""Finding the ultrasound scan area (convex fan or linear rectangle) in the frames of one clip.

A scanner screen shows the scan area plus text, logos, depth scales, grey/colour bars, calipers
and a patient banner. The scan area is told apart from them by three cues:

* space (clips and still images): the image is one large, compact area that differs from the
  screen background; text, ticks, scale lines and markers are small or thin and vanish under a
  3x3 median and a morphological opening scaled to the image size, which also cut them off the
  image when they sit a few pixels from its edge.
* time (clips): the image changes from frame to frame (speckle, breathing, probe motion);
  burnt-in overlays never do. A robust temporal range (2nd highest minus 2nd lowest grey level
  of the sampled frames) is ~0 on overlays, whatever one odd frame does. Parts of a real sector
  can be static too (a still probe, dark or heavily compressed areas), so time only rules out
  whole components that (nearly) never change, and brings in moving blobs apart from the main one.
* texture (still images): UI panels are flat; speckle never is.

Steps, on grey frames shrunk by a whole factor (longer side 400-800 px): temporal max/min
projection -> foreground (differs from the screen background) -> fill enclosed holes -> opening
-> components, overlays ruled out, the largest kept with those that clearly belong -> dim image
joined to it (hysteresis: an anechoic effusion or a dark far field at the sector's edge) ->
convex hull (a fan and a rectangle are both convex) -> polygon scaled to the original frame.
A region smaller than `min_area_frac` of the frame is not plausible: the full frame is returned
with `method="fallback"` and the reason in `note`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import cv2
import numpy as np

from pocovid.region.scan import ScanRegion


@dataclass(frozen=True)
class RegionParams:
    enabled: bool = True  # False: return ScanRegion.full (method "off")
    use_motion: bool = True  # use the temporal cue when the clip has one
    max_frames: int = 32  # frames used, evenly spread over the clip
    work_size: int = 400  # frames are shrunk by a whole factor to a longer side in [work_size, 2 x work_size)
    intensity_threshold: float = 12.0  # grey levels above the background that count as image
    weak_threshold: float = 3.0  # dim image joined to the bright image (hysteresis)
    motion_threshold: float = 5.0  # robust temporal range (grey levels) below which a pixel is static
    min_motion_share: float = 0.25  # share of the foreground that must move to use the time cue
    min_moving_share: float = 0.10  # a component with fewer moving pixels is a static overlay
    max_flat_share: float = 0.5  # a secondary component flatter than this is a UI panel (still images)
    open_frac: float = 0.01  # opening radius / shorter side: cuts thin bridges, removes text strokes
    keep_frac: float = 0.10  # other components kept if at least this share of the largest
    min_part_frac: float = 0.003  # moving blobs apart from the main one kept from this share of the frame
    min_area_frac: float = 0.10  # a region smaller than this share of the frame is implausible
    linear_fill: float = 0.93  # hull area / box area above which the shape is called "linear"


def detect_scan_region(frames: Sequence[np.ndarray] | np.ndarray, **params) -> ScanRegion:
    """Scan region of one clip: `frames` are H x W x 3 RGB uint8 (or H x W grey) frames of the
    same size, or an array (T, H, W[, 3]); a single frame (a still image) uses spatial cues only.

    Keyword parameters are the fields of `RegionParams` (e.g. `enabled=False`, `use_motion=False`).
    """
    p = _params(params)
    grey, (h, w), k = _grey_stack(frames, p)
    if not p.enabled:
        return ScanRegion.full(h, w, method="off")
    if min(h, w) < 16:
        return ScanRegion.full(h, w, method="fallback", note=f"frame of {w}x{h} pixels is too small to search")
    return _detect(grey, h, w, k, p)


# ---------------------------------------------------------------------- internals
def _params(params: dict) -> RegionParams:
    names = {f.name for f in fields(RegionParams)}
    bad = sorted(set(params) - names)
    if bad:
        raise TypeError(f"unknown scan-region parameter(s) {bad}; known: {sorted(names)}")
    return RegionParams(**params)


def _as_list(frames) -> list[np.ndarray]:
    if isinstance(frames, np.ndarray):
        if frames.ndim == 2 or (frames.ndim == 3 and frames.shape[2] in (3, 4)):
            return [frames]  # one image (grey or RGB[A])
        if frames.ndim in (3, 4):
            return list(frames)  # (T, H, W) or (T, H, W, C)
        raise ValueError(f"frames array of shape {frames.shape} is not an image or a clip")
    out = [np.asarray(getattr(f, "image", f)) for f in frames]  # also accepts media.Frame
    if not out:
        raise ValueError("no frames given")
    return out


def _grey_stack(frames, p: RegionParams) -> tuple[np.ndarray, tuple[int, int], int]:
    """(T, h, w) uint8 grey frames at working size, the original (H, W) and the shrink factor."""
    from pocovid.media import to_rgb8

    fl = _as_list(frames)
    h, w = fl[0].shape[:2]
    for f in fl:
        if f.shape[:2] != (h, w):
            raise ValueError(f"frames differ in size ({f.shape[:2]} vs {(h, w)}): one clip at a time")
    if h < 1 or w < 1:
        raise ValueError(f"frame of {w}x{h} pixels holds no image")
    if len(fl) > p.max_frames > 0:
        fl = [fl[int(round(i))] for i in np.linspace(0, len(fl) - 1, p.max_frames)]
    # Downscale by a whole factor k (fast, exact pixel averaging): the longer side ends up
    # between work_size and 2 * work_size, or stays as it is when already smaller.
    k = max(1, min(int(max(h, w) // max(1, p.work_size)), min(h, w) // 16))
    ws = (w // k, h // k)
    out = np.empty((len(fl), ws[1], ws[0]), np.uint8)
    for i, f in enumerate(fl):
        if f.dtype != np.uint8 or (f.ndim == 3 and f.shape[2] not in (1, 3)):
            f = to_rgb8(f)
        g = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) if f.ndim == 3 and f.shape[2] == 3 else f.reshape(h, w)
        out[i] = cv2.resize(g[:ws[1] * k, :ws[0] * k], ws, interpolation=cv2.INTER_AREA) if k > 1 else g
    return out, (h, w), k


def _select_frames(g: np.ndarray) -> np.ndarray:
    """Drop blank frames (fade-in, black title frames) and exact repeats of the previous frame."""
    if len(g) == 1:
        return g
    means = g.reshape(len(g), -1).mean(axis=1)
    keep = means >= max(1.0, 0.25 * float(np.median(means)))
    if not keep.any():
        keep[:] = True
    idx = np.flatnonzero(keep)
    out = [idx[0]]
    for i in idx[1:]:
        if cv2.norm(g[i], g[out[-1]], cv2.NORM_L1) > 0.25 * g[i].size:
            out.append(i)
    return g[out]


def _disk(r: float) -> np.ndarray:
    r = max(1, int(round(r)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _background(mx: np.ndarray, mn: np.ndarray, still: bool) -> tuple[int, float]:
    """Screen background level from the frame border, if most of the border is one flat, static
    value (a screen or page); otherwise 0 (black), the usual case, e.g. for clips cropped to the
    image whose border is image, not screen."""
    def ring(a):
        return np.concatenate([a[:2].ravel(), a[-2:].ravel(), a[:, :2].ravel(), a[:, -2:].ravel()])

    b, b_lo = ring(mx), ring(mn)
    mode = int(np.bincount(b, minlength=256).argmax())
    near = np.abs(b.astype(np.int16) - mode) <= 3
    if near.mean() < 0.5:
        return 0, 0.0
    if mode > 0 and np.median(b[near].astype(np.int16) - b_lo[near]) > 2:
        return 0, 0.0  # the border changes over time: image, not screen
    if mode > 0 and still and mode < 64:
        return 0, 0.0  # one image: a dim, even border is more likely dark image than a grey screen
    spread = float(np.percentile(np.abs(b[near].astype(np.int16) - mode), 95))
    return mode, spread


def _moving(g: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels whose grey level varies over the clip: robust temporal range (2nd highest minus
    2nd lowest of the sampled frames, so one odd frame does not count) above `threshold`."""
    if len(g) < 5:
        rng = g.max(axis=0) - g.min(axis=0)
    else:
        hi1, hi2 = cv2.max(g[0], g[1]), cv2.min(g[0], g[1])  # highest, second highest so far
        lo1, lo2 = hi2.copy(), hi1.copy()  # lowest, second lowest so far
        for f in g[2:]:
            hi2 = cv2.max(hi2, cv2.min(hi1, f))
            hi1 = cv2.max(hi1, f)
            lo2 = cv2.min(lo2, cv2.max(lo1, f))
            lo1 = cv2.min(lo1, f)
        rng = cv2.subtract(hi2, lo2)
    return cv2.medianBlur(rng, 3) > threshold


def _extended(binary: np.ndarray, min_extent: float) -> np.ndarray:
    """The connected parts of `binary` at least `min_extent` long or wide (lines, panels, text
    rows; not specks of speckle)."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    ext = np.maximum(stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT])
    keep = np.flatnonzero(ext >= min_extent) + 1
    return np.isin(lab, keep) if keep.size else np.zeros_like(binary, bool)


def _joined(binary: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The connected parts of `binary` that touch `seed`."""
    n, lab = cv2.connectedComponents(binary.astype(np.uint8), connectivity=8)
    ids = np.unique(lab[seed & binary])
    ids = ids[ids > 0]
    return np.isin(lab, ids)


def _hull_points(binary: np.ndarray) -> np.ndarray | None:
    """Convex hull (continuous pixel coordinates, pixel i = [i, i+1)) of the pixels of `binary`."""
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    pts = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float32)
    # every boundary pixel's four corners, so the hull covers whole pixels
    corners = np.concatenate([pts + np.float32(d) for d in ((0, 0), (1, 0), (0, 1), (1, 1))])
    return cv2.convexHull(corners).reshape(-1, 2)


def _fill(hull: np.ndarray, h: int, w: int) -> np.ndarray:
    from pocovid.region.scan import rasterize_polygon

    return rasterize_polygon(hull, h, w)


def _fill_holes(binary: np.ndarray) -> np.ndarray:
    """`binary` with every background region it encloses filled (dark speckle, anechoic areas)."""
    h, w = binary.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = binary
    ff = pad.copy()
    cv2.floodFill(ff, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    return binary | (ff[1:-1, 1:-1] == 0)


def _flat(g: np.ndarray) -> np.ndarray:
    """Pixels without any texture (3x3 local standard deviation < 0.5): UI panels, not speckle."""
    f = g.astype(np.float32)
    m = cv2.blur(f, (3, 3))
    return cv2.blur(f * f, (3, 3)) - m * m < 0.25


def _select(labels: np.ndarray, stats: np.ndarray, moving: np.ndarray | None, flat: np.ndarray,
            p: RegionParams) -> tuple[np.ndarray, np.ndarray, str]:
    """Ids of the bright components that make the scan area, ids of those ruled out as overlays,
    and a note.

    With a motion map, components that (nearly) never change are overlays; on still images,
    components without texture are UI panels. The largest remaining component is kept, and
    others at least `keep_frac` of its size.
    """
    n = len(stats)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    if moving is not None:
        ok = np.bincount(labels[moving], minlength=n)[1:] >= p.min_moving_share * areas
    else:
        ok = np.bincount(labels[flat], minlength=n)[1:] <= p.max_flat_share * areas
    note = ""
    if not ok.any():
        if moving is not None:
            return np.zeros(0, int), np.flatnonzero(~ok) + 1, ""
        ok[:] = True  # every candidate is flat: take the largest anyway
        note = "no textured image area found; took the largest flat one"
    first = int(np.argmax(np.where(ok, areas, -1)))
    keep = ok & (areas >= p.keep_frac * areas[first])
    return np.flatnonzero(keep) + 1, np.flatnonzero(~ok) + 1, note


def _moving_parts(fg: np.ndarray, moving: np.ndarray, kernel: np.ndarray, min_area: float) -> np.ndarray:
    """Blobs of foreground that move and survive the opening (structures deep in a dark fan)."""
    m = cv2.morphologyEx((fg & moving).astype(np.uint8), cv2.MORPH_OPEN, kernel)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area) + 1
    return np.isin(lab, keep) if keep.size else np.zeros_like(fg, bool)


def _detect(g: np.ndarray, H: int, W: int, k: int, p: RegionParams) -> ScanRegion:
    g = _select_frames(g)
    t, h, w = g.shape
    side = min(h, w)

    # Foreground: anything that differs from the screen background at some time.
    mx, mn = g.max(axis=0), g.min(axis=0)
    bg, spread = _background(mx, mn, still=t < 3)
    raw = np.maximum(mx.astype(np.int16) - bg, bg - mn.astype(np.int16)).astype(np.uint8)
    # A 3x3 median removes 1-pixel lines and noise but keeps a 2-pixel black gap between the
    # image and an overlay next to it (a blur would bridge it).
    level = cv2.medianBlur(raw, 3)
    fg = level > p.intensity_threshold + spread

    # Time: burnt-in overlays never change; the scan image does (speckle, breathing, probe motion).
    # Parts of a real sector can be static too (a still probe, dark or compressed areas), so time
    # vetoes only whole components that (nearly) never change, and lets small moving parts in.
    method = "intensity"
    moving = None
    if p.use_motion and t >= 3:
        moving = _moving(g, p.motion_threshold)
        if fg.any() and (moving & fg).sum() >= p.min_motion_share * fg.sum():
            method = "temporal+intensity"
        else:
            moving = None

    # Space: fill enclosed dark areas (speckle, anechoic regions); the opening cuts thin bridges
    # and removes strokes, lines and bumps (text, ticks, markers next to the image).
    kernel = _disk(p.open_frac * side)
    strong = cv2.morphologyEx(_fill_holes(fg).astype(np.uint8), cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(strong, connectivity=8)
    if n <= 1:
        return ScanRegion.full(H, W, method="fallback", note=f"no scan area found ({method})")
    flat = _flat(g[len(g) // 2])
    ids, vetoed, note = _select(labels, stats, moving, flat, p)
    if len(ids) == 0 and moving is not None:  # nothing big moves as a whole: go by space alone
        method, moving = "intensity", None
        ids, vetoed, note = _select(labels, stats, None, flat, p)
    if len(ids) == 0:
        return ScanRegion.full(H, W, method="fallback", note=f"no scan area found ({method})")
    core = np.isin(labels, ids)
    if moving is not None:
        core |= _moving_parts(fg, moving, kernel, p.min_part_frac * h * w)

    # Hysteresis: dim image joined to the core (an anechoic effusion, a dark far field) belongs to
    # it, but never what was ruled out above (static overlays, flat panels), nor bright lines or
    # text next to the image (a depth scale a few pixels off its edge; moving ones are image), nor
    # what lies beyond them. Specks of speckle in a dark area are neither long nor bright.
    apart = fg & (level > 3 * p.intensity_threshold + spread)
    apart &= ~(cv2.dilate(core.astype(np.uint8), kernel) > 0)
    if moving is not None:
        apart &= ~moving
    overlays = np.isin(labels, vetoed) | _extended(apart, 4 * p.open_frac * side)
    rejected = cv2.dilate(overlays.astype(np.uint8), kernel) > 0
    weak = (level > p.weak_threshold + spread) & ~rejected
    weak = cv2.morphologyEx(_fill_holes(weak).astype(np.uint8), cv2.MORPH_OPEN, kernel) > 0
    core |= _joined(weak | core, core)
    hull = _hull_points(core)

    hull_mask = _fill(hull, h, w)
    area = float(hull_mask.mean())
    if area < p.min_area_frac:
        return ScanRegion.full(H, W, method="fallback",
                               note=f"scan area found covers {area:.0%} of the frame (< {p.min_area_frac:.0%}); "
                                    f"using the full frame ({method})")
    box_area = float(np.prod(hull.max(axis=0) - hull.min(axis=0)))
    shape = "linear" if cv2.contourArea(hull) >= p.linear_fill * box_area else "convex"

    # The working frames are the original shrunk by k (less a remainder of < k pixels at the
    # right and bottom): scale by k, and let an edge that reaches the border reach it in full.
    poly = hull.astype(np.float64) * k
    poly[hull[:, 0] >= w - 1e-6, 0] = W
    poly[hull[:, 1] >= h - 1e-6, 1] = H
    return ScanRegion.from_polygon(poly, (H, W), shape, method, note)
