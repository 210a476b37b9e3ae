"""Synthetic lung-ultrasound clips: a fan (convex probe) or rectangle (linear probe) of speckle
with the findings a reader looks for.

Everything is rendered on a *polar raster* (rows = depth, columns = lateral position along the
probe face, i.e. scan lines) and mapped once per frame into the screen image with `cv2.remap`.
In that raster a scan line is a column and an iso-depth arc is a row, so pleura and A-lines are
rows, B-lines and rib shadows are columns, and the convex geometry (arcs, rays) comes for free.

- regular:   bright pleura sliding with respiration, 2-4 A-lines (repeats of the pleura at
             multiples of its depth, fading), rib shadows on some frames.
- covid:     3+ laser-like B-lines from the pleura to the bottom (no fading, some move with the
             sliding), thickened and irregular pleura, A-lines erased.
- pneumonia: hypoechoic, tissue-like sub-pleural consolidation (wedge or blob, shredded deep
             border) with bright dynamic air bronchograms; on most seeds an anechoic effusion at
             the bottom.

The finding is only drawn in `feature_frames`; outside them the lung looks healthy (A-lines).
Geometry, speckle and ribs depend only on `seed` (and probe/size), never on the label: the same
seed gives the same "patient" with or without the finding, which makes class comparisons exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

LABELS = ("regular", "covid", "pneumonia")
PROBES = ("convex", "linear")

_F = np.float32


@dataclass
class PhantomConfig:
    label: str = "regular"  # "regular" | "covid" | "pneumonia"
    probe: str = "convex"  # "convex" (fan) | "linear" (rectangle)
    width: int = 320
    height: int = 320
    n_frames: int = 30
    fps: float = 15.0
    overlays: bool = False  # burnt-in screen furniture outside the sector, plus a dark margin
    feature_frames: tuple[int, int] | None = None  # [start, end) frames showing the finding
    seed: int = 0

    def __post_init__(self):
        if self.label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)}; got {self.label!r}")
        if self.probe not in PROBES:
            raise ValueError(f"probe must be one of {', '.join(PROBES)}; got {self.probe!r}")
        if int(self.width) < 32 or int(self.height) < 32:
            raise ValueError(f"width and height must be at least 32 pixels; got {self.width}x{self.height}")
        if int(self.n_frames) < 1:
            raise ValueError(f"n_frames must be at least 1; got {self.n_frames}")
        if not float(self.fps) > 0:
            raise ValueError(f"fps must be positive; got {self.fps}")
        if self.feature_frames is not None:
            a, b = (int(x) for x in self.feature_frames)
            if a < 0 or b < a:
                raise ValueError(f"feature_frames must be (start, end) with 0 <= start <= end; "
                                 f"got {self.feature_frames}")
            self.feature_frames = (a, b)
        self.width, self.height, self.n_frames = int(self.width), int(self.height), int(self.n_frames)
        self.fps = float(self.fps)
        self.seed = int(self.seed)


@dataclass
class Phantom:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) bool: the true scan sector
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the sector, x1/y1 exclusive
    fps: float
    label: str
    finding_frames: np.ndarray  # (T,) bool: frames where the class finding is visible
    finding_masks: np.ndarray | None  # (T, H, W) bool: where the finding is (None for "regular")
    geometry: dict = field(default_factory=dict)  # probe geometry in pixels (see `_Geometry.as_dict`)
    overlay_mask: np.ndarray | None = None  # (H, W) bool: burnt-in screen furniture (None without overlays)
    config: PhantomConfig | None = None

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def times(self) -> np.ndarray:
        return np.arange(self.n_frames) / self.fps


# --------------------------------------------------------------------------------------------
# geometry


class _Geometry:
    """Where the sector lies on the screen and the polar raster <-> screen maps."""

    def __init__(self, cfg: PhantomConfig, rng: np.random.Generator):
        W, H = cfg.width, cfg.height
        self.W, self.H, self.probe = W, H, cfg.probe
        if cfg.overlays:  # room for the banner, settings column, depth scale
            top = max(int(round(H * rng.uniform(0.10, 0.13))), 10)
            bottom = max(int(round(H * rng.uniform(0.04, 0.07))), 4)
            left = max(int(round(W * rng.uniform(0.15, 0.19))), 10)
            right = max(int(round(W * rng.uniform(0.11, 0.14))), 10)
        else:  # a cropped clip: the sector nearly fills the frame
            top = bottom = max(int(round(H * 0.02)), 1)
            left = right = max(int(round(W * 0.02)), 1)
        rx0, ry0, rx1, ry1 = left, top, W - right, H - bottom
        Wr, Hr = rx1 - rx0, ry1 - ry0
        self.region = (rx0, ry0, rx1, ry1)
        ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
        xs += 0.5
        ys += 0.5
        if cfg.probe == "convex":
            k = rng.uniform(0.2, 0.32)  # inner / outer radius
            theta = math.radians(rng.uniform(22.0, 32.0))  # half-angle of the fan
            # the inner arc's ends touch the top of the region; the outer arc's middle touches its
            # bottom or the outer arc's ends its sides, whichever comes first
            r1 = min(Hr / (1 - k * math.cos(theta)), Wr / (2 * math.sin(theta)))
            r0 = k * r1
            cx = (rx0 + rx1) / 2.0
            ay = ry0 - r0 * math.cos(theta)  # the apex lies above the top of the sector
            r = np.hypot(xs - cx, ys - ay)
            phi = np.arctan2(xs - cx, ys - ay)
            d = (r - r0) / (r1 - r0)
            u = phi / theta
            self.nd = max(int(round(Hr)), 16)
            self.nu = max(int(round(theta * (r0 + r1))), 16)  # about 1 px per column at mid-depth
            self.params = dict(apex=(cx, ay), r0=r0, r1=r1, half_angle_deg=math.degrees(theta))
            self.depth_rows = (ay + r0, ay + r1)  # screen rows of depth 0 and full depth (centre line)
        else:
            w = min(Wr, int(round(1.25 * Hr)))
            x0 = rx0 + (Wr - w) // 2
            d = (ys - ry0) / Hr
            u = 2.0 * (xs - x0) / w - 1.0
            self.nd = max(int(Hr), 16)
            self.nu = max(int(w), 16)
            self.params = dict(x0=x0, y0=ry0, x1=x0 + w, y1=ry1)
            self.depth_rows = (float(ry0), float(ry1))
        self.mask = (d >= 0) & (d <= 1) & (np.abs(u) <= 1)
        ys_m, xs_m = np.nonzero(self.mask)
        self.box = (int(xs_m.min()), int(ys_m.min()), int(xs_m.max()) + 1, int(ys_m.max()) + 1)
        # cv2.remap maps: screen pixel -> polar raster coordinate (column, row)
        self.map_x = ((np.clip(u, -1, 1) + 1) * 0.5 * (self.nu - 1)).astype(_F)
        self.map_y = (np.clip(d, 0, 1) * (self.nd - 1)).astype(_F)
        self.map_x[~self.mask] = -10
        self.map_y[~self.mask] = -10
        self.u_px_per_unit = (self.nu - 1) / 2.0  # raster columns per unit of u

    def to_screen(self, polar: np.ndarray, nearest: bool = False) -> np.ndarray:
        interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        return cv2.remap(polar, self.map_x, self.map_y, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def as_dict(self) -> dict:
        return dict(probe=self.probe, polar_shape=(self.nd, self.nu), **self.params)


# --------------------------------------------------------------------------------------------
# helpers


def _smooth_noise(rng: np.random.Generator, n: int, scale_px: float) -> np.ndarray:
    """1-D smooth noise of length n, about unit amplitude, correlation length ~scale_px."""
    pad = int(3 * scale_px) + 2
    x = rng.standard_normal(n + 2 * pad).astype(_F)[None, :]
    x = cv2.GaussianBlur(x, (0, 0), sigmaX=max(scale_px, 0.5), sigmaY=0.1,
                         borderType=cv2.BORDER_REFLECT)[0, pad:pad + n]
    return x / (x.std() + 1e-6)


def _lateral_fn(rng: np.random.Generator, scale_u: float, span: float = 3.0, n: int = 1024):
    """A smooth random function of u on [-span/2, span/2] (evaluated with np.interp)."""
    grid = np.linspace(-span / 2, span / 2, n).astype(_F)
    vals = _smooth_noise(rng, n, scale_u / span * n)
    return lambda u: np.interp(u, grid, vals).astype(_F)


def _complex_field(rng: np.random.Generator, shape, sy: float, sx: float):
    re = rng.standard_normal(shape, dtype=_F)
    im = rng.standard_normal(shape, dtype=_F)
    re = cv2.GaussianBlur(re, (0, 0), sigmaX=sx, sigmaY=sy, borderType=cv2.BORDER_REFLECT)
    im = cv2.GaussianBlur(im, (0, 0), sigmaX=sx, sigmaY=sy, borderType=cv2.BORDER_REFLECT)
    s = float(np.sqrt(0.5 * (re.var() + im.var()))) + 1e-6
    return re / s, im / s


def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-np.square(x / sigma))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


_SPECKLE_P = 0.55  # |Z|**p: speckle contrast after compression
# 1 / E[|Z|**p] for a unit-variance complex Gaussian Z (|Z| is Rayleigh): E = Gamma(1 + p/2)
_SPECKLE_NORM = 1.0 / math.gamma(1 + _SPECKLE_P / 2)


# --------------------------------------------------------------------------------------------
# the renderer


def make_phantom(cfg: PhantomConfig | None = None, **overrides) -> Phantom:
    """Render a synthetic lung-ultrasound clip in memory (deterministic for a given config)."""
    if cfg is None:
        cfg = PhantomConfig(**overrides)
    elif overrides:
        cfg = replace(cfg, **overrides)
    # One generator per concern, so that e.g. the label changes the finding and nothing else.
    seed = cfg.seed % 2**63  # SeedSequence wants non-negative entropy
    rg = np.random.default_rng([seed, 1])  # geometry, ribs, wall: label-independent
    rt = np.random.default_rng([seed, 2])  # speckle: label-independent
    rf = np.random.default_rng([seed, 3, LABELS.index(cfg.label)])  # the finding
    geo = _Geometry(cfg, rg)
    depth_cm = _depth_scale_cm(cfg.probe, seed)
    sc = _build_scene(cfg, geo, rg)
    speckle = _Speckle(rt, geo.nd, geo.nu, cfg.probe == "linear", pad=_speckle_pad(sc))
    fs = _finding_setup(cfg.label, rf, sc.dp, sc.sig_p, geo.nd, geo.nu, sc.times, sc.slide)
    overlay = None
    if cfg.overlays:
        overlay = draw_overlays(cfg, geo, np.random.default_rng([seed, 4]), depth_cm)
    finding_frames = _finding_frames(cfg)
    frames, fmasks = _render_clip(sc, speckle, fs, finding_frames, overlay)
    return Phantom(frames=frames, mask=geo.mask.copy(), box=geo.box, fps=cfg.fps, label=cfg.label,
                   finding_frames=finding_frames, finding_masks=fmasks,
                   geometry=dict(geo.as_dict(), pleura_depth=float(sc.dp), region=geo.region,
                                 depth_rows=geo.depth_rows, depth_cm=depth_cm),
                   overlay_mask=None if overlay is None else overlay[1], config=cfg)


def _depth_scale_cm(probe: str, seed: int) -> float:
    """What the depth scale shows; its own generator, so it never shifts the other draws."""
    choices = [10, 12, 14, 16] if probe == "convex" else [4, 5, 6]
    return float(np.random.default_rng([seed, 5]).choice(choices))


def _finding_frames(cfg: PhantomConfig) -> np.ndarray:
    """(T,) bool: the frames that show the class finding (none for "regular")."""
    T = cfg.n_frames
    if cfg.label == "regular":
        return np.zeros(T, bool)
    if cfg.feature_frames is None:
        return np.ones(T, bool)
    a, b = cfg.feature_frames
    finding_frames = np.zeros(T, bool)
    finding_frames[min(a, T):min(b, T)] = True
    return finding_frames


# --------------------------------------------------------------------------------------------
# the scene: the label-independent patient, drawn from the geometry generator


@dataclass
class _Ribs:
    surface: np.ndarray  # (nd, nu) bright curved rib surfaces
    shadow: np.ndarray  # (nd, nu) 0..1 acoustic shadow below them
    vis: np.ndarray  # (T,) 0..1 how visible the ribs are on each frame
    shift_px: np.ndarray  # (T,) lateral drift with the probe, in raster columns


@dataclass
class _Scene:
    """Everything on the polar raster that does not change from frame to frame, plus the motion."""
    cfg: PhantomConfig
    geo: _Geometry
    d: np.ndarray  # (nd, 1) depth, 0 at the probe face, 1 at the bottom
    u: np.ndarray  # (1, nu) lateral position, -1 .. 1
    times: np.ndarray  # (T,) seconds
    dp: float  # pleural depth
    sig_p: float  # pleura thickness (depth units)
    gain_d: np.ndarray  # (nd, 1) gain with depth attenuation
    gamma: float
    edge: np.ndarray  # (1, nu) lateral falloff at the fan edges
    tint: np.ndarray  # (3,) RGB tint of the display
    slide: np.ndarray  # (T,) lung sliding in u units
    slide_px: np.ndarray  # (T,) the same in raster columns
    wall: np.ndarray  # (nd, nu) chest wall echo
    lung: np.ndarray  # (nd, 1) haze below the pleura
    w_lung: np.ndarray  # (nd, 1) 0 above, 1 below the pleura
    pleura_amp: float
    pleura_mod: Callable[[np.ndarray], np.ndarray]  # u -> lateral granularity of the pleura
    pleura_dep: Callable[[np.ndarray], np.ndarray]  # u -> depth wobble of an irregular (covid) pleura
    alines: np.ndarray  # (nd, nu) A-line echoes
    ribs: _Ribs


def _build_scene(cfg: PhantomConfig, geo: _Geometry, rg: np.random.Generator) -> _Scene:
    # The draws from `rg` happen in this order; changing it changes every phantom.
    nd, nu = geo.nd, geo.nu
    d = np.linspace(0, 1, nd, dtype=_F)[:, None]  # (nd, 1)
    u = np.linspace(-1, 1, nu, dtype=_F)[None, :]  # (1, nu)
    px = 1.0 / nd  # one raster row in depth units
    times = np.arange(cfg.n_frames, dtype=np.float64) / cfg.fps
    linear = cfg.probe == "linear"
    dp = rg.uniform(0.18, 0.27) if linear else rg.uniform(0.15, 0.24)  # pleural depth
    sig_p = max(0.008 if not linear else 0.007, 1.2 * px)  # pleura thickness (depth units)
    alpha = rg.uniform(1.3, 1.9) if not linear else rg.uniform(0.9, 1.3)  # attenuation
    gain = rg.uniform(0.9, 1.1)
    gamma = rg.uniform(0.8, 0.95)
    breath_T, slide = _breathing(rg, times)
    slide_px = np.round(slide * geo.u_px_per_unit).astype(int)
    tint = _tint(rg)
    edge = (1.0 - 0.18 * np.abs(u) ** 4).astype(_F)  # beam quality drops at the fan edges
    wall = _chest_wall(rg, d, u, dp, px)
    lung, w_lung = _lung_haze(rg, d, dp, sig_p)
    # pleura: lateral granularity that slides with the lung
    pleura_amp = rg.uniform(1.5, 1.8)
    pleura_mod = _lateral_fn(rg, 0.04)
    pleura_dep = _lateral_fn(rg, 0.08)  # used for the irregular (covid) pleura
    alines = _alines(rg, d, u, dp, sig_p)
    ribs = _ribs(rg, d, u, dp, sig_p, times, breath_T, linear, geo.u_px_per_unit)
    return _Scene(cfg=cfg, geo=geo, d=d, u=u, times=times, dp=dp, sig_p=sig_p,
                  gain_d=(gain * np.exp(-alpha * d)).astype(_F), gamma=gamma, edge=edge, tint=tint,
                  slide=slide, slide_px=slide_px, wall=wall, lung=lung, w_lung=w_lung,
                  pleura_amp=pleura_amp, pleura_mod=pleura_mod, pleura_dep=pleura_dep, alines=alines, ribs=ribs)


def _breathing(rg: np.random.Generator, times: np.ndarray) -> tuple[float, np.ndarray]:
    """Respiration period and the lung sliding it causes (u units per frame)."""
    breath_T = rg.uniform(3.0, 4.5)
    breath_phi = rg.uniform(0, 2 * math.pi)
    slide_amp = rg.uniform(0.03, 0.05)  # in u units
    slide = slide_amp * np.sin(2 * math.pi * times / breath_T + breath_phi)
    slide -= slide[0]  # first frame at rest position
    return breath_T, slide


def _tint(rg: np.random.Generator) -> np.ndarray:
    """Grey on most scanners, a slightly warm display on a quarter of them."""
    tint = np.array([1.0, 1.0, 1.0], _F)
    if rg.random() < 0.25:
        tint = np.array([1.0, rg.uniform(0.95, 1.0), rg.uniform(0.88, 0.97)], _F)
    return tint


def _chest_wall(rg, d, u, dp, px) -> np.ndarray:
    """Skin, fat, muscle with fascia striations (static, does not slide)."""
    nd, nu = d.shape[0], u.shape[1]
    skin = 0.7 * _gauss(d - rg.uniform(0.006, 0.012), max(0.005, px))
    fat_end = rg.uniform(0.3, 0.45) * dp
    wall = np.where(d < fat_end, _F(rg.uniform(0.1, 0.14)), _F(rg.uniform(0.2, 0.26))) + skin
    wall = np.broadcast_to(wall, (nd, nu)).copy()
    for _ in range(int(rg.integers(4, 8))):  # fascia and muscle fibres: broken bright streaks
        dj = rg.uniform(0.6 * fat_end, dp - 0.025)
        wav = 0.008 * np.sin(2 * math.pi * rg.uniform(0.3, 1.2) * u + rg.uniform(0, 6.3))
        amp = rg.uniform(0.12, 0.32) * np.clip(_lateral_fn(rg, 0.12)(u) + 0.4, 0, 1.3)
        wall += amp * _gauss(d - dj - wav, max(0.004, 0.8 * px))
    wall *= 0.85 + 0.15 * _lateral_fn(rg, 0.4)(u)
    return wall


def _lung_haze(rg, d, dp, sig_p) -> tuple[np.ndarray, np.ndarray]:
    """Faint, decaying haze below the pleura, and the 0 -> 1 weight that blends wall into lung."""
    lung_base = rg.uniform(0.11, 0.16)
    lung = (lung_base * (1 + 0.6 * np.exp(-(d - dp) / 0.08) * (d > dp))).astype(_F)
    w_lung = _smoothstep((d - dp + 1.5 * sig_p) / (3 * sig_p)).astype(_F)  # 0 above, 1 below pleura
    return lung, w_lung


def _alines(rg, d, u, dp, sig_p) -> np.ndarray:
    """A-lines: repeats of the pleura at multiples of its depth, fading."""
    a0, rho = rg.uniform(0.38, 0.52), rg.uniform(0.6, 0.75)
    alines = np.zeros((d.shape[0], 1), _F)
    n_alines = int(rg.integers(2, 5))
    k_list = [k for k in range(2, 6) if k * dp < 0.95][:n_alines]
    for i, k in enumerate(k_list):
        alines += a0 * rho ** i * _gauss(d - k * dp, sig_p * (1.3 + 0.6 * (k - 1)))
    return alines * (0.65 + 0.35 * (1 + _lateral_fn(rg, 0.25)(u)) / 2)


def _ribs(rg, d, u, dp, sig_p, times, breath_T, linear, u_px_per_unit) -> _Ribs:
    """Bright curved rib surfaces slightly above the pleura with dark acoustic shadows below,
    seen on a window of the clip (probe tilt) and drifting a little with the probe."""
    ribs = []
    for side in (-1, 1):
        ur = side * (rg.uniform(0.8, 0.95) if linear else rg.uniform(0.72, 0.86))
        wr = rg.uniform(0.18, 0.26) if linear else rg.uniform(0.1, 0.16)
        dr = dp - rg.uniform(0.008, 0.025)
        ribs.append((ur, wr, dr))
    vis = _rib_visibility(rg, len(times))
    rib_drift = 0.015 * np.sin(2 * math.pi * times / (breath_T * 1.7) + rg.uniform(0, 6.3))
    nd, nu = d.shape[0], u.shape[1]
    surface = np.zeros((nd, nu), _F)
    shadow = np.zeros((nd, nu), _F)
    for ur, wr, dr in ribs:
        x = (u - ur) / wr
        ds = dr + 0.02 * np.square(np.clip(x, -1.2, 1.2))
        inside = _smoothstep((1.0 - np.abs(x)) / 0.25)
        surface += 0.85 * inside * _gauss(d - ds, 1.4 * sig_p)
        shadow = np.maximum(shadow, inside * _smoothstep((d - ds - 0.6 * sig_p) / (2 * sig_p)))
    shift_px = np.round(rib_drift * u_px_per_unit).astype(int)
    return _Ribs(surface=surface, shadow=shadow, vis=vis, shift_px=shift_px)


def _rib_visibility(rg, T: int) -> np.ndarray:
    """(T,) 0..1: on 70% of clips the ribs appear on a window of frames, fading in and out."""
    vis = np.zeros(T, _F)
    if rg.random() < 0.7:
        span = max(1, int(round(T * rg.uniform(0.3, 0.9))))
        start = int(rg.integers(0, T - span + 1))
        ramp = max(1.0, 0.1 * T)
        tt = np.arange(T)
        vis = np.clip(np.minimum(tt - start + 1, start + span - tt) / ramp, 0, 1).astype(_F)
    return vis


# --------------------------------------------------------------------------------------------
# speckle


def _speckle_pad(sc: _Scene) -> int:
    """Columns of static speckle beyond the raster, so the lung can slide over it."""
    return int(np.abs(sc.slide_px).max()) + int(np.abs(sc.ribs.shift_px).max()) + 4


class _Speckle:
    """A static complex speckle field (the lung part slides with it) with fresh noise mixed in per frame."""

    beta = 0.3  # per-frame decorrelation

    def __init__(self, rt: np.random.Generator, nd: int, nu: int, linear: bool, pad: int):
        self.rt, self.nd, self.nu, self.pad = rt, nd, nu, pad
        sc = nd / 320.0
        self.sy = max(0.5, (0.9 if linear else 1.0) * sc)
        self.sx = max(0.7, (1.6 if linear else 2.0) * nu / 320.0)
        self.re0, self.im0 = _complex_field(rt, (nd, nu + 2 * pad), self.sy, self.sx)
        self.c0 = math.sqrt(1 - self.beta * self.beta)
        self.noise_floor = rt.uniform(0.012, 0.02)
        self.blur_y, self.blur_x = max(0.4, 0.7 * sc), max(0.4, 0.9 * nu / 320.0)  # display resolution

    def frame(self, sh: int) -> tuple[np.ndarray, np.ndarray]:
        """Speckle amplitude of the next frame: (lung, shifted by `sh` columns; wall, static)."""
        nd, nu, pad, c0 = self.nd, self.nu, self.pad, self.c0
        nre = self.rt.standard_normal((nd, nu), dtype=_F)
        nim = self.rt.standard_normal((nd, nu), dtype=_F)
        nre = cv2.GaussianBlur(nre, (0, 0), sigmaX=self.sx, sigmaY=self.sy)
        nim = cv2.GaussianBlur(nim, (0, 0), sigmaX=self.sx, sigmaY=self.sy)
        nstd = float(np.sqrt(0.5 * (nre.var() + nim.var()))) + 1e-6
        bn = self.beta / nstd
        re0, im0 = self.re0, self.im0
        # Rayleigh amplitude, its contrast softened as a scanner's log compression does
        s_lung = np.power(np.hypot(c0 * re0[:, pad - sh:pad - sh + nu] + bn * nre,
                                   c0 * im0[:, pad - sh:pad - sh + nu] + bn * nim), _SPECKLE_P) * _SPECKLE_NORM
        s_wall = np.power(np.hypot(c0 * re0[:, pad:pad + nu] + bn * nre,
                                   c0 * im0[:, pad:pad + nu] + bn * nim), _SPECKLE_P) * _SPECKLE_NORM
        return s_lung, s_wall


# --------------------------------------------------------------------------------------------
# frames


def _render_clip(sc: _Scene, speckle: _Speckle, fs: dict, finding_frames: np.ndarray, overlay):
    """(T, H, W, 3) uint8 frames and (T, H, W) finding masks (None for "regular")."""
    cfg, geo = sc.cfg, sc.geo
    T = cfg.n_frames
    frames = np.empty((T, cfg.height, cfg.width, 3), np.uint8)
    fmasks = np.zeros((T, cfg.height, cfg.width), bool) if cfg.label != "regular" else None
    mask_f = geo.mask.astype(_F)
    for t in range(T):
        s_lung, s_wall = speckle.frame(sc.slide_px[t])
        amp, fmask_p = _frame_amplitude(sc, fs, t, bool(finding_frames[t]), s_lung, s_wall)
        amp = amp + speckle.noise_floor * s_lung
        frames[t] = _display(sc, speckle, amp, mask_f, overlay)
        if fmasks is not None and fmask_p is not None:
            fmasks[t] = geo.to_screen(fmask_p.astype(np.uint8), nearest=True).astype(bool) & geo.mask
    return frames, fmasks


def _frame_amplitude(sc: _Scene, fs: dict, t: int, on: bool, s_lung, s_wall):
    """Echo amplitude of frame t on the polar raster, and where the finding is (or None)."""
    covid = on and sc.cfg.label == "covid"
    u_sl = sc.u - _F(sc.slide[t])  # lateral coordinate attached to the sliding lung
    pleura = _pleura(sc, fs, u_sl, covid)
    a_amp = 1.0
    lung_t = sc.lung
    if covid:
        a_amp = 0.0  # B-lines erase the A-lines
        lung_t = sc.lung * 1.25
    tissue = sc.wall * (1 - sc.w_lung) * s_wall + (lung_t * sc.w_lung + a_amp * sc.alines) * s_lung
    tissue = tissue + pleura * np.sqrt(s_lung)
    fmask_p = None
    if on and sc.cfg.label == "pneumonia":
        tissue, fmask_p = _apply_pneumonia(tissue, fs, sc.d, sc.u, t, s_lung, sc.sig_p, sc.geo.nd, sc.geo.nu)
    shadow = None
    if sc.ribs.vis[t] > 0:
        tissue, shadow = _apply_ribs(tissue, sc.ribs, t, s_wall)
    amp = tissue * sc.gain_d * sc.edge
    if covid:
        bl, fmask_p = _blines(fs, sc.d, sc.u, t, s_lung)
        if shadow is not None:  # B-lines arise at the pleura, so a rib shadows them too
            bl = bl * (1 - 0.94 * float(sc.ribs.vis[t]) * shadow)
        amp = amp + bl
    return amp, fmask_p


def _pleura(sc: _Scene, fs: dict, u_sl, covid: bool) -> np.ndarray:
    """The pleural line, its granularity sliding; thick, wavy and broken with covid."""
    p_mod = 0.7 + 0.3 * np.clip(sc.pleura_mod(u_sl), -1, 1)
    if covid:
        p_d = sc.dp + fs["pleura_irreg"] * sc.pleura_dep(u_sl)
        p_mod = p_mod * np.clip(0.55 + 0.45 * sc.pleura_mod(u_sl * 1.7 + 0.3), 0.15, 1.0)
        return sc.pleura_amp * p_mod * _gauss(sc.d - p_d, sc.sig_p * fs["pleura_thick"])
    return sc.pleura_amp * p_mod * _gauss(sc.d - sc.dp, sc.sig_p)


def _apply_ribs(tissue, ribs: _Ribs, t: int, s_wall):
    """Ribs belong to the static chest wall: they drift slightly with the probe, not with the lung."""
    rs = ribs.shift_px[t]
    shadow = np.roll(ribs.shadow, rs, axis=1) if rs else ribs.shadow
    surf = np.roll(ribs.surface, rs, axis=1) if rs else ribs.surface
    v = float(ribs.vis[t])
    return tissue * (1 - 0.94 * v * shadow) + v * surf * np.sqrt(s_wall), shadow


def _display(sc: _Scene, speckle: _Speckle, amp, mask_f, overlay) -> np.ndarray:
    """Compress, blur and scan-convert the amplitude into an RGB screen frame, overlays on top."""
    img = np.power(np.clip(amp, 0, 1.2) * (1 / 1.2), sc.gamma) * 255.0 * 1.1
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=speckle.blur_x, sigmaY=speckle.blur_y)  # display / video resolution
    scr = sc.geo.to_screen(np.clip(img, 0, 255).astype(_F)) * mask_f
    frame = np.clip(scr[..., None] * sc.tint, 0, 255).astype(np.uint8)
    if overlay is not None:
        overlay_rgb, overlay_alpha = overlay
        np.copyto(frame, overlay_rgb, where=overlay_alpha[..., None])
    return frame


# --------------------------------------------------------------------------------------------
# findings


def _finding_setup(label, rf, dp, sig_p, nd, nu, times, slide) -> dict:
    fs: dict = {"times": times, "slide": slide}
    if label == "covid":
        n = int(rf.integers(3, 6))
        pos: list[float] = []
        for _ in range(1000):  # spread between the ribs, not too close together
            p = rf.uniform(-0.45, 0.45)
            if all(abs(p - q) > 0.15 for q in pos):
                pos.append(p)
            if len(pos) == n:
                break
        n = len(pos)
        fs["blines"] = [dict(u0=p,
                             width=rf.uniform(0.03, 0.055),
                             amp=rf.uniform(0.45, 0.7),
                             moving=bool(rf.random() < 0.6),
                             flick_f=rf.uniform(0.3, 1.0), flick_phi=rf.uniform(0, 6.3))
                        for p in sorted(pos)]
        fs["blines"][int(rf.integers(0, n))]["moving"] = True  # at least one moves
        fs["dp"] = dp
        fs["sig_p"] = sig_p
        fs["pleura_irreg"] = rf.uniform(0.005, 0.009)
        fs["pleura_thick"] = rf.uniform(2.0, 2.8)
    elif label == "pneumonia":
        effusion = bool(rf.random() < 0.7)
        e0 = rf.uniform(0.66, 0.76)
        max_h = ((e0 - 0.05) if effusion else 0.9) - dp
        h = min(rf.uniform(0.28, 0.45), max_h / 1.3)
        fs.update(dp=dp, sig_p=sig_p,
                  uc=rf.uniform(-0.15, 0.15), wc=rf.uniform(0.33, 0.48), hc=h,
                  wedge=bool(rf.random() < 0.4),
                  shred=_lateral_fn(rf, 0.05), level=rf.uniform(0.38, 0.5),
                  effusion=effusion, e0=e0, eslope=rf.uniform(-0.12, 0.12), ewave=_lateral_fn(rf, 0.25),
                  side=_lateral_fn(rf, 0.15),
                  move_frac=rf.uniform(0.4, 0.8), T=rf.uniform(3.0, 4.5))
        n_ab = int(rf.integers(8, 18))
        abs_ = []
        for _ in range(n_ab):
            z = rf.uniform(0.12, 0.8)
            shape = (1 - z) ** 0.8 if fs["wedge"] else math.sqrt(max(0.0, 1 - z * z))
            uu = rf.uniform(-0.75, 0.75) * shape
            abs_.append(dict(z=z, u=uu, ang=rf.uniform(-0.6, 0.6), length=rf.uniform(0.02, 0.05),
                             amp=rf.uniform(1.0, 1.6), f=rf.uniform(0.4, 1.2), phi=rf.uniform(0, 6.3)))
        fs["bronchograms"] = abs_
        fs["ab_sig"] = (max(0.7, 0.9 * nd / 320), max(0.8, 1.4 * nu / 320))
    return fs


def _blines(fs, d, u, t, s_lung):
    tt = fs["times"][t]
    sl = float(fs["slide"][t])  # moving B-lines move with the sliding lung
    dp, sig_p = fs["dp"], fs["sig_p"]
    prof = np.zeros_like(u)
    hard = np.zeros(u.shape, bool)
    for b in fs["blines"]:
        ub = b["u0"] + (sl if b["moving"] else 0.0)
        a = b["amp"] * (0.85 + 0.15 * math.sin(2 * math.pi * b["flick_f"] * tt + b["flick_phi"]))
        x = (u - ub) / b["width"]
        prof = np.maximum(prof, a * np.exp(-np.power(np.abs(x), 3)))  # flat-topped, crisp: laser-like
        hard |= np.abs(x) < 1.0
    top = _smoothstep((d - dp + 0.5 * sig_p) / (2.5 * sig_p))  # starts at the pleura, no fading
    streak = np.power(s_lung, 0.3)
    bl = prof * top * streak
    fmask = hard & (d >= dp)
    return bl, fmask


def _apply_pneumonia(tissue, fs, d, u, t, s_lung, sig_p, nd, nu):
    tt = fs["times"][t]
    mv = fs["move_frac"] * float(fs["slide"][t])  # the consolidation moves with respiration
    dp, hc, wc = fs["dp"], fs["hc"], fs["wc"]
    uu = u - (fs["uc"] + mv)
    depth_b = hc * (1 + 0.22 * np.clip(fs["shred"](u - mv), -1.5, 1.5))  # shredded deep border
    z = (d - dp) / depth_b
    zc = np.clip(z, 0, 1)
    shape = np.power(1 - zc, 0.8) if fs["wedge"] else np.sqrt(1 - zc * zc)
    lat = shape + 0.12 * fs["side"](d * 3.0 + np.sign(uu)) - np.abs(uu) / wc  # > 0 inside
    a_lat = _smoothstep(lat / 0.12)
    a_dep = _smoothstep(z / 0.05) * _smoothstep((1 - z) / 0.06)
    alpha = (a_lat * a_dep).astype(_F)
    # hepatised lung: tissue-like, coarser texture, no A-lines
    tex = 0.75 * cv2.GaussianBlur(s_lung, (0, 0), sigmaX=fs["ab_sig"][1] * 1.2, sigmaY=fs["ab_sig"][0]) + 0.25 * s_lung
    tissue = tissue * (1 - alpha) + alpha * fs["level"] * tex
    # bright, irregular shreds at the deep border
    shred = a_lat * _gauss((z - 1) * depth_b, 1.8 * sig_p) * 0.55 * np.clip(fs["shred"](u * 3.1 + 0.7) + 0.6, 0, 2)
    tissue = tissue + shred * s_lung
    # dynamic air bronchograms: short bright branches that move with respiration and flicker
    imp = np.zeros((nd, nu), _F)
    sy, sx = fs["ab_sig"]
    norm = 2 * math.pi * sy * sx
    for b in fs["bronchograms"]:
        zb = b["z"] + 0.04 * math.sin(2 * math.pi * tt / fs["T"] + b["phi"])
        br = b["amp"] * max(0.0, 0.35 + 0.65 * math.sin(2 * math.pi * b["f"] * tt + b["phi"]))
        if br <= 0.02:
            continue
        for s in (-0.5, 0.0, 0.5):
            dd = dp + (zb + s * b["length"] / hc * math.cos(b["ang"])) * hc
            ub = fs["uc"] + mv + b["u"] * wc + s * b["length"] * math.sin(b["ang"]) * 1.5
            r = int(round(dd * (nd - 1)))
            c = int(round((ub + 1) * 0.5 * (nu - 1)))
            if 0 <= r < nd and 0 <= c < nu:
                imp[r, c] += br * norm
    imp = cv2.GaussianBlur(imp, (0, 0), sigmaX=sx, sigmaY=sy)
    tissue = tissue + imp * alpha * np.sqrt(s_lung)
    # the pleura over a consolidation is interrupted
    fmask = alpha > 0.5
    if fs["effusion"]:
        # anechoic fluid at the bottom, under an oblique, wavy lung/fluid interface
        e_top = fs["e0"] + fs["eslope"] * u + 0.025 * fs["ewave"](u - 0.5 * mv)
        a_e = _smoothstep((d - e_top) / 0.03).astype(_F)
        tissue = tissue * (1 - a_e) + a_e * 0.02 * s_lung
        tissue = tissue + 0.12 * _gauss(d - e_top, 2.0 * sig_p) * s_lung
        fmask = fmask | (a_e > 0.5)
    return tissue, fmask


# --------------------------------------------------------------------------------------------
# overlays (burnt-in screen furniture, all outside the sector)

_WHITE, _GREY = (230, 230, 230), (160, 170, 175)
_GREEN, _YELLOW, _CYAN = (120, 220, 120), (235, 220, 60), (90, 200, 230)


@dataclass
class _Canvas:
    """The overlay layer being drawn, with a text size that follows the screen height."""
    rgb: np.ndarray  # (H, W, 3) uint8
    fscale: float  # font scale
    lh: int  # line height

    def text(self, s: str, org, colour, k: float = 1.0) -> None:
        cv2.putText(self.rgb, s, org, cv2.FONT_HERSHEY_SIMPLEX, self.fscale * k, colour, 1, cv2.LINE_AA)


def draw_overlays(cfg: PhantomConfig, geo: _Geometry, rng: np.random.Generator, depth_cm: float):
    """RGB layer and boolean alpha of the scanner screen furniture; never touches the sector."""
    H, W = cfg.height, cfg.width
    fscale = max(0.22, H / 900.0)
    cv = _Canvas(np.zeros((H, W, 3), np.uint8), fscale, max(7, int(round(26 * fscale))))
    rx0, ry0, rx1, ry1 = geo.region
    gain_db = int(rng.integers(40, 70))  # the layer's only two draws, in this order
    focus = rng.uniform(0.35, 0.6)  # where the focus marker sits, 0..1 of the depth
    # a dark settings panel at the left (a UI rectangle, not black)
    panel_w = max(6, rx0 - max(3, W // 100))
    cv.rgb[ry0:H - 2, 0:panel_w] = (14, 15, 19)
    _draw_banner(cv, cfg.probe, ry0)
    _draw_logo(cv, ry0)
    depth_cm = int(depth_cm)
    _draw_settings(cv, cfg.fps, depth_cm, gain_db, ry0)
    gb_y0 = _draw_grey_bar(cv, panel_w, ry0, ry1)
    _draw_caliper(cv, panel_w, ry0, gb_y0)
    _draw_depth_scale(cv, geo, depth_cm, focus)
    # probe orientation marker: left of the top of the sector
    mx = max(2, geo.box[0] - max(4, W // 50))
    cv2.circle(cv.rgb, (mx, ry0 + 3), max(2, W // 160), _CYAN, -1)

    rgb = cv.rgb
    alpha = rgb.any(axis=2)
    # never inside (or touching) the sector
    keep_out = cv2.dilate(geo.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    alpha &= ~keep_out
    rgb[~alpha] = 0
    return rgb, alpha


def _draw_banner(cv: _Canvas, probe: str, ry0: int) -> None:
    """Patient, ID, date/time, probe and preset above the sector."""
    W, lh = cv.rgb.shape[1], cv.lh
    y = max(lh - 1, int(ry0 * 0.45))
    cv.text("PHANTOM^TEST  ID PH0001", (4, y), _WHITE)
    cv.text("2020-03-14 10:22:31", (4, min(ry0 - 2, y + lh)), _GREY, 0.9)
    tx = int(W * 0.45)
    cv.text("C5-1 Lung" if probe == "convex" else "L12-4 Lung", (tx, y), _WHITE)
    cv.text("MI 0.9  TIs 0.3", (tx, min(ry0 - 2, y + lh)), _GREY, 0.9)


def _draw_logo(cv: _Canvas, ry0: int) -> None:
    """A coloured badge with letters, top right."""
    W = cv.rgb.shape[1]
    lw, lhh = max(12, int(W * 0.09)), max(6, int(ry0 * 0.55))
    lx0, ly0 = W - lw - 3, 2
    cv2.rectangle(cv.rgb, (lx0, ly0), (lx0 + lw, ly0 + lhh), (30, 110, 190), -1)
    cv2.circle(cv.rgb, (lx0 + lhh // 2 + 1, ly0 + lhh // 2), max(2, lhh // 3), (250, 250, 250), -1)
    cv.text("US", (lx0 + lhh + 1, ly0 + lhh - 2), (250, 250, 250), 0.8)


def _draw_settings(cv: _Canvas, fps: float, depth_cm: int, gain_db: int, ry0: int) -> None:
    """The settings column in the left panel, as many lines as fit."""
    H, lh = cv.rgb.shape[0], cv.lh
    lines = [f"FR {fps:.0f}", f"Gn {gain_db}", f"D {depth_cm}cm", "DR 60", "2D", "P Gen"]
    for i, s in enumerate(lines):
        yy = ry0 + (i + 1) * lh
        if yy > H - 2 * lh:
            break
        cv.text(s, (3, yy), _GREEN, 0.85)


def _draw_grey_bar(cv: _Canvas, panel_w: int, ry0: int, ry1: int) -> int:
    """A vertical grey ramp at the bottom of the settings panel; returns its top row."""
    W = cv.rgb.shape[1]
    gb_w = max(3, W // 60)
    gb_x = max(2, panel_w - gb_w - 3)
    gb_y0, gb_y1 = int(ry0 + 0.55 * (ry1 - ry0)), int(ry1 - 0.05 * (ry1 - ry0))
    if gb_y1 - gb_y0 > 4:
        ramp = np.linspace(255, 0, gb_y1 - gb_y0).astype(np.uint8)
        cv.rgb[gb_y0:gb_y1, gb_x:gb_x + gb_w] = ramp[:, None, None]
    return gb_y0


def _draw_caliper(cv: _Canvas, panel_w: int, ry0: int, gb_y0: int) -> None:
    """A caliper cross with a measurement, bottom left, above the grey bar."""
    H, W, lh = cv.rgb.shape[0], cv.rgb.shape[1], cv.lh
    cx_, cy_ = max(5, panel_w // 3), max(ry0 + 2, gb_y0 - lh)
    arm = max(3, W // 60)
    cv2.line(cv.rgb, (cx_ - arm, cy_), (cx_ + arm, cy_), _YELLOW, 1)
    cv2.line(cv.rgb, (cx_, cy_ - arm), (cx_, cy_ + arm), _YELLOW, 1)
    cv.text("D1 2.3cm", (3, min(H - 3, cy_ + arm + lh)), _YELLOW, 0.7)


def _draw_depth_scale(cv: _Canvas, geo: _Geometry, depth_cm: int, focus: float) -> None:
    """Depth scale right of the sector: a tick per cm, numbers every 5 cm, the focus marker at
    `focus` (0..1) of the depth."""
    H, W = cv.rgb.shape[:2]
    sx_ = min(W - 8, geo.box[2] + max(3, W // 80))
    top, bot = int(round(geo.depth_rows[0])), int(round(geo.depth_rows[1])) - 1
    cv2.line(cv.rgb, (sx_, top), (sx_, bot), _GREY, 1)
    for cm in range(depth_cm + 1):
        yy = int(round(top + (bot - top) * cm / depth_cm))
        long = cm % 5 == 0
        cv2.line(cv.rgb, (sx_, yy), (sx_ + (5 if long else 3), yy), _WHITE if long else _GREY, 1)
        if long and cm > 0:
            cv.text(str(cm), (sx_ + 6, min(H - 2, yy + 4)), _WHITE, 0.8)
    fy = int(top + (bot - top) * focus)
    tri = np.array([[sx_ - 1, fy], [sx_ - 5, fy - 3], [sx_ - 5, fy + 3]], np.int32)
    cv2.fillPoly(cv.rgb, [tri], _CYAN)
