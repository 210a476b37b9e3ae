"""From a recording to the frames a model sees: scan region found once per clip, then every
sampled frame cropped to it (and optionally resized), streamed so long clips stay in memory.

    clip = load_clip("scan.mp4", rate_hz=3, max_frames=30, size=224)
    clip.frames, clip.times, clip.region.to_dict()
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np

from pocovid.media import Frame, MediaError, MediaInfo, MediaLimits, open_media, sample_indices
from pocovid.region.detect import detect_scan_region
from pocovid.region.scan import ScanRegion

DETECT_LONG_SIDE = 800  # frames kept for detection are shrunk to this: a 4K clip costs no more than HD
# the region is searched on frames of a clip's first seconds: a video decodes from its start, so frames
# spread over the whole clip cost a decode of all of it (as long again as the frame pass's own decode).
# Against frames spread over the whole clip, on the 281 videos of the POCUS and COVID-BLUES datasets:
# mask IoU median 1.000, >= 0.95 on 279 (2 s: 0.997, >= 0.95 on 274)
REGION_SPAN_S = 4.0


@dataclass
class Clip:
    path: str
    info: MediaInfo
    region: ScanRegion
    frames: list[np.ndarray] = field(repr=False)  # cropped (and resized) RGB uint8
    times: list[float]
    indices: list[int]


def clip_region(path: str | os.PathLike, max_frames: int = 32, enabled: bool = True,
                limits: MediaLimits | None = None, span_s: float | None = REGION_SPAN_S, **params) -> ScanRegion:
    """Scan region of a recording from up to `max_frames` frames spread over its first `span_s`
    seconds (None: the whole clip); `params`: the detector's (`RegionParams` fields)."""
    with open_media(path, limits) as r:
        info = r.info
        if not enabled:
            return ScanRegion.full(info.height, info.width, method="off")
        n = info.n_frames
        if span_s is not None:
            n = min(n, max(max_frames, int(round(span_s * (info.fps or 25.0)))))
        idx = sample_indices(n, info.fps, None, max_frames)
        factor = max(1, int(np.ceil(max(info.width, info.height) / DETECT_LONG_SIDE)))
        small = []
        for f in r.frames(idx):
            if f.image.shape[:2] != (info.height, info.width):
                raise MediaError(path, f"frame {f.index} is {f.image.shape[1]}x{f.image.shape[0]} pixels, the "
                                       f"header says {info.width}x{info.height}: the frame size changes")
            # shrunk and turned grey as it decodes (what the search uses: the same grey it would make,
            # a third of the memory); a new array, never a view that keeps a full-size frame alive
            img = f.image[::factor, ::factor] if factor > 1 else f.image
            small.append(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY))  # frames: H x W x 3 uint8 RGB
    if not small:
        return ScanRegion.full(info.height, info.width, method="fallback", note="no frame decoded")
    region = detect_scan_region(small, **params)
    if factor == 1:
        return region
    if region.is_full or region.polygon is None:
        return ScanRegion.full(info.height, info.width, method=region.method, note=region.note)
    poly = np.asarray(region.polygon) * factor  # back to full-resolution pixel coordinates
    return ScanRegion.from_polygon(poly, (info.height, info.width), region.shape, region.method, region.note)


def scan_region_of(path: str | os.PathLike, max_frames: int = 32, **params) -> ScanRegion:
    """The scan region of a recording, as the frame pass finds it (`clip_region`); `params`: the
    detector's (`RegionParams` fields, e.g. `use_motion=False`). Raises `MediaError` for a file that
    cannot be read."""
    return clip_region(path, max_frames, **params)


def resize_frame(image: np.ndarray, size: int | None) -> np.ndarray:
    """Square `size` x `size` (area interpolation when shrinking), or unchanged when size is None."""
    if size is None or image.shape[:2] == (size, size):
        return image
    shrink = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def iter_clip_frames(path: str | os.PathLike, region: ScanRegion, rate_hz: float | None = None,
                     max_frames: int | None = None, size: int | None = None,
                     limits: MediaLimits | None = None) -> Iterator[Frame]:
    """Sampled frames of a recording, each cropped to `region` (and resized), one at a time."""
    with open_media(path, limits) as r:
        yield from _cropped(r, region, rate_hz, max_frames, size)


def _cropped(reader, region, rate_hz, max_frames, size) -> Iterator[Frame]:
    info = reader.info
    if region.frame_size != (info.height, info.width):
        raise ValueError(f"region is for {region.frame_size} frames, the recording has {(info.height, info.width)}")
    for f in reader.frames(sample_indices(info.n_frames, info.fps, rate_hz, max_frames)):
        if f.image.shape[:2] != region.frame_size:
            raise MediaError(info.path, f"frame {f.index} is {f.image.shape[1]}x{f.image.shape[0]} pixels, the "
                                        f"first frames {info.width}x{info.height}: the frame size changes")
        yield Frame(f.index, f.time_s, np.ascontiguousarray(resize_frame(region.crop(f.image), size)))


def load_clip(path: str | os.PathLike, rate_hz: float | None = None, max_frames: int | None = None,
              size: int | None = None, crop: bool = True, region: ScanRegion | dict | None = None,
              limits: MediaLimits | None = None) -> Clip:
    """A recording's sampled frames, cropped to its scan region (detected unless given or `crop`
    is False), resized to `size` when given. The region is recorded in the result."""
    if isinstance(region, dict):
        region = ScanRegion.from_dict(region)
    if region is None:
        region = clip_region(path, enabled=crop, limits=limits)
    with open_media(path, limits) as r:
        got = list(_cropped(r, region, rate_hz, max_frames, size))
        info = r.info
    if not got:
        raise MediaError(path, "no frames could be decoded")
    return Clip(str(path), info, region, [f.image for f in got], [f.time_s for f in got], [f.index for f in got])
