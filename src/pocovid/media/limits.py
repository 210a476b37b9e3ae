"""What a recording may cost: pixels per frame, frames per clip, clip duration.

Checked before anything is decoded (image and video headers, DICOM Rows x Columns) and again on
what actually decodes (each decoded frame's size, the running frame count): a file whose header
lies is caught either way. A file over a limit is a one-line `MediaError` naming the limit.

Defaults are written here once. Change them per call (`open_media(path, limits=MediaLimits(...))`,
`stream_predict(..., limits=...)`) or for the whole process with environment variables, which the
CLI and the service read too:

    POCOVID_MAX_FRAME_PIXELS=80000000 POCOVID_MAX_FRAMES=40000 POCOVID_MAX_DURATION_S=1800 pocovid analyze ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

ENV_PREFIX = "POCOVID_"


@dataclass(frozen=True)
class MediaLimits:
    # 50 megapixels: above 8K (33 MP) and any scanner screen; one such frame is 150 MB as RGB
    max_frame_pixels: int = 50_000_000
    # frames per clip, counted on what decodes (a header's count is never trusted)
    max_frames: int = 20_000
    # clip duration from the frames and the frame rate (15 minutes)
    max_duration_s: float = 900.0

    def __post_init__(self):
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"MediaLimits.{f.name} must be positive, got {getattr(self, f.name)!r}")

    @classmethod
    def from_env(cls, environ=None) -> MediaLimits:
        """The defaults, each overridden by `POCOVID_<FIELD NAME IN CAPITALS>` when set."""
        env = os.environ if environ is None else environ
        kw = {}
        for f in fields(cls):
            v = env.get(ENV_PREFIX + f.name.upper())
            if v:
                try:
                    kw[f.name] = type(getattr(cls, f.name))(float(v))
                except ValueError:
                    raise ValueError(f"{ENV_PREFIX + f.name.upper()}={v!r} is not a number") from None
        return cls(**kw)

    def frame_problem(self, width: int, height: int) -> str | None:
        """The reason a `width` x `height` frame is refused, or None."""
        if width * height > self.max_frame_pixels:
            return (f"{width}x{height} pixels per frame, over the limit of {_mp(self.max_frame_pixels)} "
                    f"(MediaLimits.max_frame_pixels)")
        return None

    def frames_problem(self, n_frames: int) -> str | None:
        if n_frames > self.max_frames:
            return f"more than {self.max_frames} frames, the limit (MediaLimits.max_frames)"
        return None

    def duration_problem(self, n_frames: int, fps: float | None) -> str | None:
        if fps and n_frames / fps > self.max_duration_s:
            return (f"{n_frames} frames at {fps:g} fps last {n_frames / fps:.0f} s, over the limit of "
                    f"{self.max_duration_s:g} s (MediaLimits.max_duration_s)")
        return None


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:g} megapixels"


def resolve_limits(limits: MediaLimits | None) -> MediaLimits:
    return MediaLimits.from_env() if limits is None else limits
