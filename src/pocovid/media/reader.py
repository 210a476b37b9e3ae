"""One reader for every recording a lung-ultrasound user has: video, image, DICOM.

`open_media(path)` returns a reader with `.info` (a `MediaInfo`) that iterates over
`Frame`s: RGB uint8 arrays with their timestamps. Videos and multi-frame DICOM are
decoded as a stream, so memory stays flat however long the clip is.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from pocovid.errors import PocovidError

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".m4v", ".mpeg", ".mpg", ".gif", ".mkv", ".webm", ".wmv"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DICOM_EXTENSIONS = {".dcm", ".dicom", ""}  # scanners often write DICOM files without an extension
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS | {".dcm", ".dicom"}


class MediaError(PocovidError):
    """A recording that cannot be read. `str()` is one line naming the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever the decoder said
        super().__init__(f"{self.path}: {self.reason}")


@dataclass(frozen=True)
class MediaInfo:
    path: str
    kind: str  # "video" (several frames) or "image" (one frame)
    format: str  # container or codec family: "mp4", "gif", "png", "dicom", ...
    fps: float | None  # None for still images
    n_frames: int
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps if self.fps else 0.0


class Frame(NamedTuple):
    index: int
    time_s: float
    image: np.ndarray  # H x W x 3, uint8, RGB


def media_kind_of(path: str | os.PathLike) -> str | None:
    """'video', 'image' or 'dicom' from the file name, None for anything else."""
    ext = Path(path).suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in (".dcm", ".dicom"):
        return "dicom"
    return None


def to_rgb8(a: np.ndarray) -> np.ndarray:
    """Any image array (grey, grey+alpha, RGB, RGBA; 8 or 16 bit or float) as H x W x 3 uint8."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] in (2, 4):
        a = a[..., :-1]  # drop alpha: ultrasound is never transparent
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8:
        a = a.astype(np.float32)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if a.dtype.kind == "f" and lo >= 0 and hi <= 1.0 and hi > 0:
            a = a * 255.0
        elif hi > 255 or lo < 0:  # 16-bit or signed data: stretch its own range to 8 bits
            a = (a - lo) * (255.0 / max(hi - lo, 1e-6))
        a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"unsupported pixel layout {a.shape}")
    return np.ascontiguousarray(a)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise MediaError(path, "no such file")
    if path.is_dir():
        raise MediaError(path, "is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise MediaError(path, "permission denied")
    if path.stat().st_size == 0:
        raise MediaError(path, "empty file (0 bytes)")


def looks_like_dicom(path: Path) -> bool:
    """A DICOM Part 10 file (the 'DICM' marker after the 128-byte preamble), whatever its name."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


class MediaReader:
    """Base: iterate for all frames, `frames(indices)` for some, `.info` for the facts."""

    info: MediaInfo

    def __iter__(self) -> Iterator[Frame]:
        return self.frames(None)

    def frames(self, indices: Iterable[int] | None = None) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _wanted(indices: Iterable[int] | None):
    if indices is None:
        return None, None
    want = sorted(set(int(i) for i in indices))
    return set(want), (want[-1] if want else -1)


class VideoReader(MediaReader):
    """PyAV (FFmpeg) decoding, one frame at a time."""

    def __init__(self, path: Path):
        import av

        self.path = path
        try:
            self._container = av.open(str(path))
        except Exception as e:  # FFmpeg's errors vary by format; all mean "not a readable video"
            raise MediaError(path, f"not a readable video ({_short(e)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise MediaError(path, "no video stream in the file")
        s = self._container.streams.video[0]
        fps = float(s.average_rate or s.guessed_rate or 0) or None
        n = int(s.frames or 0)
        if self._container.format.name == "gif" and n > 0 and s.duration and s.time_base:
            # GIF delays are whole 1/100 s, so 15 fps is stored as 7, 6, 7, ... and FFmpeg's
            # average_rate only looks at the first few; frames / duration is the true average.
            fps = n / float(s.duration * s.time_base) or fps
        if n <= 0:
            n = self._count_packets()
        if n <= 0:
            self._container.close()
            raise MediaError(path, "no frames could be read")
        cc = s.codec_context
        self.info = MediaInfo(str(path), "video", path.suffix.lower().lstrip(".") or cc.name,
                              fps, n, int(cc.width), int(cc.height))
        self._time_base = float(s.time_base) if s.time_base else None
        self._start = s.start_time or 0

    def _count_packets(self) -> int:
        # Containers such as MPEG-PS carry no frame count; demuxing (no decoding) is cheap.
        n = 0
        try:
            for p in self._container.demux(video=0):
                if p.size:
                    n += 1
        except Exception:
            pass
        self._container.seek(0)
        return n

    def frames(self, indices=None):
        wanted, last = _wanted(indices)
        fps = self.info.fps or 25.0
        try:
            self._container.seek(0)
        except Exception:
            pass
        i = -1
        try:
            for frame in self._container.decode(video=0):
                i += 1
                if wanted is not None:
                    if i > last:
                        break
                    if i not in wanted:
                        continue
                has_pts = frame.pts is not None and self._time_base
                t = (frame.pts - self._start) * self._time_base if has_pts else i / fps
                yield Frame(i, float(max(t, 0.0)), frame.to_ndarray(format="rgb24"))
        except MediaError:
            raise
        except Exception as e:
            if i < 0:
                raise MediaError(self.path, f"not a readable video ({_short(e)})") from None
            # A truncated file: keep what decoded, as players do; the caller sees fewer frames.
            return

    def close(self):
        self._container.close()


class ImageReader(MediaReader):
    def __init__(self, path: Path):
        from PIL import Image, UnidentifiedImageError

        self.path = path
        try:
            with Image.open(path) as im:
                im.load()
                self._image = _pil_to_rgb8(im)
        except UnidentifiedImageError:
            raise MediaError(path, "not a readable image (unknown or corrupt format)") from None
        except Exception as e:
            raise MediaError(path, f"not a readable image ({_short(e)})") from None
        h, w = self._image.shape[:2]
        self.info = MediaInfo(str(path), "image", path.suffix.lower().lstrip("."), None, 1, w, h)

    def frames(self, indices=None):
        if indices is None or 0 in set(indices):
            yield Frame(0, 0.0, self._image)


def _pil_to_rgb8(im) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_rgb8(np.array(im))
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGB")
    return to_rgb8(np.array(im))


class DicomReader(MediaReader):
    """Single-frame and multi-frame (cine) DICOM, uncompressed or compressed (JPEG etc.)."""

    def __init__(self, path: Path):
        import pydicom
        from pydicom.errors import InvalidDicomError

        self.path = path
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            raise MediaError(path, "not a DICOM file") from None
        except Exception as e:
            raise MediaError(path, f"not a readable DICOM file ({_short(e)})") from None
        self._has_pixels = _dicom_has_pixels(path)
        if not self._has_pixels:
            raise MediaError(path, "DICOM file has no pixel data (a report or structured document, not an image)")
        rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        n = int(ds.get("NumberOfFrames", 1) or 1)
        if rows <= 0 or cols <= 0:
            raise MediaError(path, "DICOM image has no size (Rows/Columns missing)")
        self._photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        fps = dicom_fps(ds) if n > 1 else None
        self.info = MediaInfo(str(path), "video" if n > 1 else "image", "dicom", fps, n, cols, rows)

    def frames(self, indices=None):
        from pydicom.pixels import iter_pixels

        wanted, last = _wanted(indices)
        fps = self.info.fps or 1.0
        try:
            it = iter_pixels(self.path, as_rgb=True)
            for i, arr in enumerate(it):
                if wanted is not None:
                    if i > last:
                        break
                    if i not in wanted:
                        continue
                if self._photometric == "MONOCHROME1":  # MONOCHROME1 shows low values as white
                    arr = arr.max() - arr
                yield Frame(i, i / fps if self.info.n_frames > 1 else 0.0, to_rgb8(arr))
        except MediaError:
            raise
        except Exception as e:
            raise MediaError(self.path, f"DICOM pixel data cannot be decoded ({_short(e)})") from None


def _dicom_has_pixels(path: Path) -> bool:
    import pydicom

    ds = pydicom.dcmread(path, specific_tags=["PixelData", "FloatPixelData", "DoubleFloatPixelData"])
    return any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def dicom_fps(ds) -> float | None:
    """Frame rate from the cine tags, in the order scanners fill them."""
    for tag in ("CineRate", "RecommendedDisplayFrameRate"):
        v = ds.get(tag)
        if v:
            try:
                if float(v) > 0:
                    return float(v)
            except (TypeError, ValueError):
                pass
    ft = ds.get("FrameTime")  # milliseconds per frame
    if ft:
        try:
            if float(ft) > 0:
                return 1000.0 / float(ft)
        except (TypeError, ValueError):
            pass
    ftv = ds.get("FrameTimeVector")
    if ftv:
        try:
            steps = [float(x) for x in list(ftv)[1:] if float(x) > 0]
            if steps:
                return 1000.0 / (sum(steps) / len(steps))
        except (TypeError, ValueError):
            pass
    return None


def _short(e: Exception) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg[:200]


def open_media(path: str | os.PathLike) -> MediaReader:
    """Open any supported recording; raises `MediaError` with a one-line reason otherwise."""
    path = Path(path)
    _check_file(path)
    ext = path.suffix.lower()
    if ext in (".dcm", ".dicom") or looks_like_dicom(path):
        return DicomReader(path)
    if ext in IMAGE_EXTENSIONS:
        return ImageReader(path)
    if ext in VIDEO_EXTENSIONS:
        return VideoReader(path)
    if ext == "":
        raise MediaError(path, "no file extension and not a DICOM file")
    raise MediaError(path, f"unsupported file type '{ext}' (videos: {_fmt(VIDEO_EXTENSIONS)}; "
                           f"images: {_fmt(IMAGE_EXTENSIONS)}; DICOM: .dcm)")


def _fmt(exts) -> str:
    return " ".join(sorted(e for e in exts if e))


def probe(path: str | os.PathLike) -> MediaInfo:
    """The facts of a recording (fps, frame count, size) without decoding its frames."""
    with open_media(path) as r:
        return r.info


def read_frames(path: str | os.PathLike, indices: Iterable[int] | None = None) -> list[Frame]:
    """All (or the given) frames of a recording in memory: for short clips and tests."""
    with open_media(path) as r:
        out = list(r.frames(indices))
    if not out:
        raise MediaError(path, "no frames could be decoded")
    return out


def sample_indices(n_frames: int, fps: float | None, rate_hz: float | None = None,
                   max_frames: int | None = None) -> list[int]:
    """Frame indices at `rate_hz` (every frame if None), at most `max_frames`, evenly spread.

    Deterministic: the same arguments always give the same indices.
    """
    if n_frames <= 0:
        return []
    if rate_hz and fps and rate_hz < fps:
        step = fps / rate_hz
        idx = [min(int(round(k * step)), n_frames - 1) for k in range(int(math.floor((n_frames - 1) / step)) + 1)]
        idx = sorted(set(idx))
    else:
        idx = list(range(n_frames))
    if max_frames is not None and 0 < max_frames < len(idx):
        pick = np.linspace(0, len(idx) - 1, max_frames)
        idx = [idx[int(round(p))] for p in pick]
    return idx


def sample_frames(path: str | os.PathLike, rate_hz: float | None = None,
                  max_frames: int | None = None) -> list[Frame]:
    """Frames of a recording at `rate_hz`, at most `max_frames`, evenly spread over the clip."""
    with open_media(path) as r:
        idx = sample_indices(r.info.n_frames, r.info.fps, rate_hz, max_frames)
        out = list(r.frames(idx))
    if not out:
        raise MediaError(path, "no frames could be decoded")
    return out
