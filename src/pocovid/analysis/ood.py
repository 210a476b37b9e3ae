"""Is this lung ultrasound at all? The out-of-distribution guard.

A photo, a blank or noise frame, a screenshot of text, a cardiac or abdominal view must come out
`out_of_distribution: true` rather than as a confident diagnosis. Cues, each measured on a few
frames spread over the clip and decided by majority of those frames:

image statistics (on the model-size grey crop, inside the scan-region mask)
    blank      almost no grey-level variation (std < `blank_std`; real recordings: >= 17)
    noise      no spatial correlation: neighbouring pixels of ultrasound are strongly correlated
               (speckle, anatomy); i.i.d. noise is not (lag-1 correlation < `noise_corr`; real
               recordings: >= 0.92, noise: ~0.1)
    document   mostly bright background (share of pixels > 180 above `bright_share`; real
               recordings: <= 0.07): ultrasound is mostly dark, a document or web page is not
colour (on the original frame, inside the scan region)
    colour     share of pixels whose colour is not explained by their brightness (chromaticity far
               from the median chromaticity of pixels of the same brightness) above `colour_share`:
               grey and tinted-grey scanner images (one colour per grey level) stay at <= 0.04 on
               the real recordings, the colour photographs reach 0.07-0.7
feature density (the model's own view: pooled trunk features of every analysed frame)
    density    median over frames of the Mahalanobis d^2 to the training frames' Gaussian
               (`model.meta["extra"]["feature_density"]`) above `density_factor` (3.5) x its 99.9th
               percentile on the training frames. Measured (benchmarks/ood.py, patient-grouped
               folds of the real data): held-out real clips reach at most ~2.1x, the generated and
               natural non-lung images at least ~6.6x.
scan region
    region     no plausible scan region was found (`method == "fallback"`): a weak cue, counted
               only together with another weak cue (density above `weak_density_factor` x q999)

Any strong cue flags the input; two weak cues together do too. `OODParams` holds the thresholds
(chosen on benchmarks/ood.py; a model file may override them in `meta["extra"]["ood"]`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np
from pocovid.models.density import FeatureDensity, fit_feature_density  # noqa: F401  (fit: re-exported)


@dataclass
class OODParams:
    blank_std: float = 4.0
    noise_corr: float = 0.5
    bright_share: float = 0.35
    colour_share: float = 0.08
    colour_delta: float = 0.05  # chromaticity distance (L1) that counts as "another colour"
    density_factor: float = 3.5  # strong cue: clip median d^2 > density_factor * q999 of the training frames
    weak_density_factor: float = 1.5  # weak cue: clip median d^2 > weak_density_factor * q999
    frames_checked: int = 8  # image cues are measured on this many frames, spread over the clip

    @classmethod
    def from_model(cls, model) -> "OODParams":
        extra = (getattr(model, "meta", None) or {}).get("extra") or {}
        over = extra.get("ood") if isinstance(extra, dict) else None
        p = cls()
        if isinstance(over, dict):
            known = {f.name for f in fields(cls)}
            for k, v in over.items():
                if k in known and isinstance(v, (int, float, str)) and not isinstance(v, bool):
                    setattr(p, k, type(getattr(p, k))(v))
        return p


# ------------------------------------------------------------------------------- image statistics
def _lag1_corr(g: np.ndarray, m: np.ndarray) -> float:
    """Mean of the horizontal and vertical lag-1 correlations of grey image `g` over mask `m`."""
    out = []
    for a, b, ma, mb in ((g[:, :-1], g[:, 1:], m[:, :-1], m[:, 1:]), (g[:-1], g[1:], m[:-1], m[1:])):
        sel = ma & mb
        if sel.sum() < 50:
            continue
        x, y = a[sel].astype(np.float64), b[sel].astype(np.float64)
        sx, sy = x.std(), y.std()
        if sx < 1e-6 or sy < 1e-6:
            out.append(1.0)  # flat: perfectly "correlated" (the blank cue speaks for it)
            continue
        out.append(float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy)))
    return float(np.mean(out)) if out else 1.0


def grey_stats(grey: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Blank / noise / document statistics of a model-size grey crop inside `mask`."""
    g = np.asarray(grey)
    m = np.ones(g.shape, bool) if mask is None else np.asarray(mask, bool)
    if m.sum() < 50:
        m = np.ones(g.shape, bool)
    v = g[m].astype(np.float32)
    return {"std": float(v.std()), "mean": float(v.mean()), "corr": _lag1_corr(g, m),
            "bright_share": float((v > 180).mean())}


def colour_share(rgb: np.ndarray, mask: np.ndarray | None = None, delta: float = 0.05,
                 max_side: int = 256) -> float:
    """Share of the (reasonably bright) pixels inside `mask` whose colour is not explained by
    their brightness: chromaticity (r, g) = (R, G) / (R + G + B) more than `delta` from the median
    chromaticity of pixels of the same brightness. ~0 for grey ultrasound and for scanners' tinted
    grey maps (a blue-ish or sepia look-up table gives one colour per grey level), large for a
    photograph, where colour and brightness vary independently."""
    a = np.asarray(rgb)
    m = np.ones(a.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    f = max(1, int(np.ceil(max(a.shape[:2]) / max_side)))
    a, m = a[::f, ::f].astype(np.float32), m[::f, ::f]
    s = a.sum(2)
    sel = m & (s > 60)  # dark pixels have no reliable chromaticity
    if sel.sum() < 50:
        return 0.0
    chroma = a[sel][:, :2] / s[sel][:, None]
    level = np.minimum((s[sel] / (3 * 256) * 32).astype(int), 31)  # 32 brightness bins
    ref = np.zeros((32, 2), np.float32)
    for b in np.unique(level):
        ref[b] = np.median(chroma[level == b], 0)
    d = np.abs(chroma - ref[level]).sum(1)
    return float((d > delta).mean())


def frame_cues(original: np.ndarray, grey_crop: np.ndarray, region, crop_mask_small: np.ndarray | None,
               params: OODParams) -> dict:
    """Cues of one frame: `original` RGB frame, its model-size grey crop and the crop mask at that size."""
    st = grey_stats(grey_crop, crop_mask_small)
    x0, y0, x1, y1 = region.box
    cs = colour_share(original[y0:y1, x0:x1], None if region.is_full else region.crop_mask, params.colour_delta)
    st["colour_share"] = cs
    st["blank"] = st["std"] < params.blank_std
    st["noise"] = (not st["blank"]) and st["corr"] < params.noise_corr
    st["document"] = st["bright_share"] > params.bright_share
    st["colour"] = cs > params.colour_share
    return st


def small_mask(region, size: int) -> np.ndarray | None:
    if region.is_full:
        return None
    return cv2.resize(region.crop_mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)


# ----------------------------------------------------------------------------------------- decision
#: What an input out of distribution is, in plain words (the start of its review reason).
OUTSIDE_WORDS = "outside what the model was trained on (e.g. a linear probe, another organ, or not lung ultrasound)"
#: The reasons, in plain words (the figures behind them are in `cues`: density_ratio, region_method).
DENSITY_WORDS = ("the images look clearly unlike the recordings the model was trained on, as images from another "
                 "kind of probe (e.g. a linear probe), of another organ, or not from ultrasound do")
DENSITY_EDGE_WORDS = "the images look somewhat unlike the recordings the model was trained on"
REGION_WORDS = "no ultrasound scan area (a fan or a rectangle of image) was found in the frames"


def decide(cues: list[dict], d2: np.ndarray | None, density: FeatureDensity | None, region, params: OODParams) -> dict:
    """Combine the per-frame image cues, the feature density and the region into one verdict:
    {"out_of_distribution": bool, "reasons": [...], "cues": {...}} (plain JSON data)."""
    n = len(cues)
    share = {k: (float(np.mean([c[k] for c in cues])) if n else 0.0) for k in ("blank", "noise", "document", "colour")}
    med = lambda k: float(np.median([c[k] for c in cues])) if n else None  # noqa: E731
    strong, weak = [], []
    texts = {"blank": "the frames are blank (no image in them)",
             "noise": "the frames look like noise, not like an image",
             "document": "the frames are mostly bright, like a document, a screenshot or a photo, not ultrasound",
             "colour": "it is a colour image (lung ultrasound is grey)"}
    for k, msg in texts.items():
        if n and share[k] > 0.5:
            strong.append(msg)
    out = {"frames_checked": n, "share_blank": share["blank"], "share_noise": share["noise"],
           "share_document": share["document"], "share_colour": share["colour"], "grey_std": med("std"),
           "spatial_correlation": med("corr"), "bright_share": med("bright_share"),
           "colour_share": med("colour_share"), "region_method": region.method, "region_shape": region.shape}
    if density is not None and d2 is not None and len(d2):
        m = float(np.median(d2))
        q999 = density.q["q999"]
        wq = params.weak_density_factor * q999
        out |= {"density_d2_median": m, "density_d2_train_q99": density.q.get("q99"), "density_d2_train_q999": q999,
                "density_ratio": m / q999 if q999 > 0 else None}
        if m > params.density_factor * q999:
            strong.append(DENSITY_WORDS)
        elif m > wq:
            weak.append(DENSITY_EDGE_WORDS)
    else:
        out["density_d2_median"] = None
        out["density_note"] = "the model file carries no feature density: that cue is off"
    if region.method == "fallback":
        weak.append(REGION_WORDS)
    reasons = strong + (weak if len(weak) >= 2 else [])
    return {"out_of_distribution": bool(strong or len(weak) >= 2), "reasons": reasons,
            "weak_cues": weak, "cues": out, "params": asdict(params)}
