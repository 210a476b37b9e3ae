"""`ScanRegion`: where the ultrasound image lies in a frame, and how to crop / mask to it.

A region is found once per clip (see `pocovid.region.detect`) and then applied to every frame
of that clip, so the same crop is used throughout and can be saved next to the results
(`to_dict` / `from_dict`, JSON-serialisable).

Coordinates: `box` is (x0, y0, x1, y1) in pixels of the original frame, x1/y1 exclusive.
A `polygon` (when present) is in continuous pixel coordinates, pixel (i, j) covering
[i, i+1) x [j, j+1); the mask holds the pixels whose centres lie inside it, as `cv2.fillPoly`
draws it (inclusive: up to one pixel more at the right and bottom edges, never less).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import cv2
import numpy as np

SHAPES = ("convex", "linear", "full")
_FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class ScanRegion:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in the original frame
    mask: np.ndarray  # (H, W) bool in the original frame size; read-only
    frame_size: tuple[int, int]  # (H, W) it was computed for
    shape: str  # "convex", "linear" or "full"
    method: str  # "temporal+intensity", "intensity", "off", "fallback"
    note: str = ""  # why a fallback was taken, or other remarks; "" when all went well
    polygon: tuple[tuple[float, float], ...] | None = field(default=None, repr=False)

    def __post_init__(self):
        h, w = (int(v) for v in self.frame_size)
        m = np.asarray(self.mask)
        if m.shape != (h, w):
            raise ValueError(f"mask shape {m.shape} does not match frame_size {(h, w)}")
        if m.dtype != bool:
            m = m.astype(bool)
        elif m.flags.writeable:
            m = m.copy()
        m.flags.writeable = False
        x0, y0, x1, y1 = (int(v) for v in self.box)
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ValueError(f"box {self.box} is empty or outside a {w}x{h} frame")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, not {self.shape!r}")
        object.__setattr__(self, "mask", m)
        object.__setattr__(self, "frame_size", (h, w))
        object.__setattr__(self, "box", (x0, y0, x1, y1))
        if self.polygon is not None:
            object.__setattr__(self, "polygon", tuple((float(x), float(y)) for x, y in self.polygon))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def full(cls, h: int, w: int, method: str = "off", note: str = "") -> "ScanRegion":
        """The no-op region: the whole frame (detection turned off, or nothing found)."""
        h, w = int(h), int(w)
        poly = ((0.0, 0.0), (float(w), 0.0), (float(w), float(h)), (0.0, float(h)))
        return cls((0, 0, w, h), np.ones((h, w), bool), (h, w), "full", method, note, poly)

    @classmethod
    def from_polygon(cls, polygon, frame_size: tuple[int, int], shape: str, method: str,
                     note: str = "") -> "ScanRegion":
        """A region from a polygon in continuous pixel coordinates (rounded to 1/100 pixel)."""
        h, w = int(frame_size[0]), int(frame_size[1])
        poly = np.asarray(polygon, np.float64).reshape(-1, 2)
        poly[:, 0] = np.clip(poly[:, 0], 0, w)
        poly[:, 1] = np.clip(poly[:, 1], 0, h)
        poly = np.round(poly, 2)
        mask = rasterize_polygon(poly, h, w)
        box = box_of_mask(mask)
        if box is None:
            raise ValueError("polygon covers no pixel of the frame")
        return cls(box, mask, (h, w), shape, method, note, tuple(map(tuple, poly.tolist())))

    @classmethod
    def from_mask(cls, mask: np.ndarray, shape: str = "convex", method: str = "mask",
                  note: str = "") -> "ScanRegion":
        """A region from any (H, W) boolean mask; the box is its bounding rectangle."""
        mask = np.asarray(mask, bool)
        box = box_of_mask(mask)
        if box is None:
            raise ValueError("mask is empty")
        return cls(box, mask, mask.shape[:2], shape, method, note, None)

    # ------------------------------------------------------------------ properties
    @property
    def is_full(self) -> bool:
        return self.shape == "full"

    @property
    def area_fraction(self) -> float:
        """Share of the frame inside the mask."""
        return float(self.mask.mean())

    @property
    def box_fraction(self) -> float:
        """Share of the frame inside the box."""
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0) / float(self.frame_size[0] * self.frame_size[1])

    @property
    def crop_mask(self) -> np.ndarray:
        """The mask cut to the box: the (y1-y0, x1-x0) shape of every cropped frame."""
        x0, y0, x1, y1 = self.box
        return self.mask[y0:y1, x0:x1]

    # ------------------------------------------------------------------ applying
    def crop(self, image: np.ndarray) -> np.ndarray:
        """Cut `image` (H x W grey, or H x W x C) to the box and zero what lies outside the mask.

        Always returns a new array; the input is never modified.
        """
        image = np.asarray(image)
        if image.shape[:2] != self.frame_size:
            raise ValueError(f"frame of size {image.shape[:2]} does not match the region's "
                             f"frame size {self.frame_size}; detect the region on this clip")
        x0, y0, x1, y1 = self.box
        out = image[y0:y1, x0:x1]
        if self.is_full:
            return out.copy()
        if out.dtype == np.uint8 and (out.ndim == 2 or (out.ndim == 3 and out.shape[2] <= 4)):
            return cv2.bitwise_and(out, out, mask=self._crop_mask_u8)  # a new array
        out = out.copy()
        out[~self.crop_mask] = 0
        return out

    @cached_property
    def _crop_mask_u8(self) -> np.ndarray:
        return np.ascontiguousarray(self.crop_mask, dtype=np.uint8)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.crop(image)

    # ------------------------------------------------------------------ saving
    def to_dict(self) -> dict:
        """JSON-serialisable record; `ScanRegion.from_dict` rebuilds the same mask."""
        d = {"version": _FORMAT_VERSION, "box": list(self.box), "frame_size": list(self.frame_size),
             "shape": self.shape, "method": self.method, "note": self.note}
        if self.polygon is not None:
            d["polygon"] = [[x, y] for x, y in self.polygon]
        else:
            d["rle"] = rle_encode(self.mask)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ScanRegion":
        h, w = (int(v) for v in d["frame_size"])
        shape, method, note = d.get("shape", "convex"), d.get("method", ""), d.get("note", "")
        if d.get("polygon") is not None:
            r = cls.from_polygon(d["polygon"], (h, w), shape, method, note)
        elif d.get("rle") is not None:
            r = cls(tuple(d["box"]), rle_decode(d["rle"], h, w), (h, w), shape, method, note, None)
        else:
            raise ValueError("region record holds neither 'polygon' nor 'rle'")
        if "box" in d and tuple(int(v) for v in d["box"]) != r.box:
            raise ValueError(f"region record is inconsistent: box {d['box']} but mask spans {list(r.box)}")
        return r

    # ------------------------------------------------------------------ comparing
    def __eq__(self, other):
        if not isinstance(other, ScanRegion):
            return NotImplemented
        return (self.box == other.box and self.frame_size == other.frame_size and self.shape == other.shape
                and self.method == other.method and np.array_equal(self.mask, other.mask))

    __hash__ = None  # holds an array: not hashable

    def __repr__(self):
        return (f"ScanRegion(box={self.box}, frame_size={self.frame_size}, shape={self.shape!r}, "
                f"method={self.method!r}, area={self.area_fraction:.3f}"
                + (f", note={self.note!r}" if self.note else "") + ")")


def crop_frames(frames: Sequence[np.ndarray] | np.ndarray, region: ScanRegion) -> list[np.ndarray]:
    """Every frame of a clip cut to `region.box`, zero outside `region.mask`."""
    return [region.crop(f) for f in frames]


# ---------------------------------------------------------------------- helpers
def rasterize_polygon(polygon: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pixels whose centres lie in a polygon given in continuous coordinates (pixel i = [i, i+1)),
    boundary included as `cv2.fillPoly` draws it."""
    shift = 4
    pts = np.round((np.asarray(polygon, np.float64) - 0.5) * (1 << shift)).astype(np.int32)
    m = np.zeros((h, w), np.uint8)
    if len(pts) >= 3:
        cv2.fillPoly(m, [pts.reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8, shift=shift)
    return m.astype(bool)


def box_of_mask(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def rle_encode(mask: np.ndarray) -> list[int]:
    """Run lengths of the row-major flattened mask, starting with a run of False (may be 0)."""
    flat = np.asarray(mask, bool).ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return [int(r) for r in runs]


def rle_decode(runs: Sequence[int], h: int, w: int) -> np.ndarray:
    runs = np.asarray(runs, np.int64)
    if runs.sum() != h * w:
        raise ValueError(f"run lengths sum to {int(runs.sum())}, not {h}x{w}={h * w}")
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape(h, w)
