"""One reader for every recording a lung-ultrasound user has: video, image, DICOM.

`open_media(path)` returns a reader with `.info` (a `MediaInfo`) that iterates over
`Frame`s: RGB uint8 arrays with their timestamps. Videos and multi-frame DICOM are
decoded as a stream, so memory stays flat however long the clip is.

`reader.frames(indices, grey=True, rgb=some)` gives grey frames instead (the RGB frames' BT.601
grey, as `cv2.COLOR_RGB2GRAY` makes it), RGB for the indices in `some`: a video in a YUV or grey
pixel format gives them from its decoded luma plane, without the RGB conversion (a model that
looks at grey frames needs no more).
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from pocovid.errors import PocovidError
from pocovid.files import path_text
from pocovid.media.limits import MediaLimits, resolve_limits

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".m4v", ".mpeg", ".mpg", ".gif", ".mkv", ".webm", ".wmv"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DICOM_EXTENSIONS = {".dcm", ".dicom", ""}  # scanners often write DICOM files without an extension
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS | {".dcm", ".dicom"}

# The decoders warn about each oddity of a damaged file (pydicom: invalid values, guessed VRs; PIL:
# TIFF tags), several stderr lines a file; what counts is the frames or the one-line MediaError.
warnings.filterwarnings("ignore", category=UserWarning, module=r"(pydicom|PIL)\.")


class MediaError(PocovidError):
    """A recording that cannot be read. `str()` is one line naming the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fsdecode(path)
        self.reason = display_path(" ".join(str(reason).split()))  # one line, whatever the decoder said
        super().__init__(f"{display_path(path)}: {self.reason}")


def display_path(path: str | os.PathLike) -> str:
    """A file name as one printable line: bytes that are not UTF-8 as \\xNN, control characters
    (a newline in a name) escaped, so that an error naming the file stays one line."""
    s = path_text(path)  # the \\xNN escaping of CSV and JSON (pocovid.files), then control characters
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


@dataclass(frozen=True)
class MediaInfo:
    path: str
    kind: str  # "video" (several frames) or "image" (one frame)
    format: str  # container or codec family: "mp4", "gif", "png", "dicom", ...
    fps: float | None  # None for still images
    n_frames: int
    width: int
    height: int
    n_frames_declared: int | None = None  # the header's count when the file holds fewer (cut short)

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps if self.fps else 0.0


class Frame(NamedTuple):
    index: int
    time_s: float
    image: np.ndarray  # H x W x 3, uint8, RGB (H x W grey when the frames were asked for grey)


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
        a = _scaled_to_uint8(a)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"unsupported pixel layout {a.shape}")
    return np.ascontiguousarray(a)


def _scaled_to_uint8(a: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] x 255; 16-bit or signed data stretched from its own range; else as is.
    In float32, a band of rows at a time: a 50-megapixel 16-bit frame costs no float copy of itself."""
    rows = max(1, (1 << 22) // max(1, a[0].size if a.ndim else 1))  # ~4 M values per band

    def bands():
        for i in range(0, len(a), rows):
            yield i, a[i:i + rows].astype(np.float32)

    lo, hi = np.inf, -np.inf
    for _, b in bands():
        if b.size and not np.isnan(b).all():
            lo, hi = min(lo, float(np.nanmin(b))), max(hi, float(np.nanmax(b)))
    if lo > hi:  # nothing but NaN (or nothing)
        lo = hi = float("nan")
    out = np.empty(a.shape, np.uint8)
    for i, b in bands():
        if lo >= 0 and hi <= 1.0 and hi > 0:
            b *= 255.0
        elif hi > 255 or lo < 0:  # 16-bit or signed data: stretch its own range to 8 bits
            b -= lo
            b *= 255.0 / max(hi - lo, 1e-6)
        np.nan_to_num(b, copy=False)
        out[i:i + rows] = np.clip(b, 0, 255, out=b)
    return out


def _check_file(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MediaError(path, "no such file") from None
    except OSError as e:
        raise MediaError(path, f"cannot read ({e.strerror or type(e).__name__})") from None
    if stat.S_ISDIR(st.st_mode):
        raise MediaError(path, "is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block, /dev/zero never end
        raise MediaError(path, "not a regular file (a pipe, device or socket)")
    if not os.access(path, os.R_OK):
        raise MediaError(path, "permission denied")
    if st.st_size == 0:
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
    """Base: iterate for all frames, `frames(indices)` for some, `.info` for the facts.

    `frames(indices, grey=True, rgb=...)`: the frames as H x W grey uint8, the grey that
    `rgb_to_grey` makes of the RGB frame (a video in a YUV or grey pixel format gives it from the
    decoded luma: the same where the chroma is the frame's commonest, +-1 grey level elsewhere where
    FFmpeg's RGB conversion rounds it, more on the edges of colour overlays), but those whose index
    is in `rgb`, which come as RGB (the frames an image check looks at), from the same single decode."""

    info: MediaInfo

    def __iter__(self) -> Iterator[Frame]:
        return self.frames(None)

    def frames(self, indices: Iterable[int] | None = None, *, grey: bool = False,
               rgb: Iterable[int] = ()) -> Iterator[Frame]:
        raise NotImplementedError

    def frames_at(self, targets: dict[int, float]) -> Iterator[Frame]:
        """The frames `targets` ({index: time_s}, as `frames` gave them earlier), RGB, in index
        order. A video seeks to the key frame before each instead of decoding from its start."""
        return self.frames(sorted(targets))

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


def rgb_to_grey(image: np.ndarray) -> np.ndarray:
    """RGB uint8 -> grey uint8, BT.601 (0.299 R + 0.587 G + 0.114 B, OpenCV's fixed point); grey as is."""
    import cv2

    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _as_asked(image: np.ndarray, index: int, grey: bool, rgb: set[int]) -> np.ndarray:
    """An RGB frame as `frames(grey=..., rgb=...)` hands it out."""
    return rgb_to_grey(image) if grey and index not in rgb else image


#: Pixel formats whose first plane is the full-resolution 8-bit luma (Y) of the frame: their grey
#: frames are a table look-up on that plane. Any other (RGB, palette, 10-bit, ...) goes through RGB.
LUMA_FORMATS = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "gray"})
_LUMA_TABLES: dict[tuple, np.ndarray | None] = {}
_UNMEASURED = object()


def _plane(frame, k: int) -> np.ndarray:
    """Plane `k` of a decoded PyAV frame as an (rows, line_size) uint8 view (rows padded to the stride)."""
    p = frame.planes[k]
    return np.frombuffer(p, np.uint8, count=p.line_size * p.height).reshape(p.height, p.line_size)


def _rgb(frame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _luma_table(frame) -> np.ndarray | None:
    """256 entries: luma value -> the grey `rgb_to_grey(_rgb(frame))` gives a pixel of that luma and
    of the frame's commonest chroma (grey ultrasound: U = V = 128, or near it where the encoder left
    a faint tint, which FFmpeg's RGB rounding turns into a grey level), for frames of this one's
    pixel format, colour range, colour matrix and size. Measured once each on a frame of that size
    holding every luma value, through the very conversion of the RGB path (FFmpeg's own range
    scaling and rounding, which differ with the range and even with the frame size: an odd height
    takes another code path). None when the format has no luma plane, the frame is too small to
    hold every value, or the measurement is not a function of the luma."""
    import av
    import cv2

    fmt = frame.format.name
    w, h = frame.width, frame.height
    if fmt not in LUMA_FORMATS or w * h < 256:
        return None
    uv = tuple(_common_chroma(frame, k) for k in (1, 2)) if fmt != "gray" else ()
    key = (fmt, int(frame.color_range), int(frame.colorspace), w, h, uv)
    table = _LUMA_TABLES.get(key, _UNMEASURED)
    if table is _UNMEASURED:
        cal = av.VideoFrame(w, h, fmt)
        for k, c in enumerate(uv, 1):
            _plane(cal, k)[:] = c
        y = np.resize(np.arange(256, dtype=np.uint8), (h, w))  # 0, 1, ..., 255, 0, 1, ... row after row
        _plane(cal, 0)[:, :w] = y
        cal.color_range, cal.colorspace = frame.color_range, frame.colorspace
        g = rgb_to_grey(_rgb(cal))
        table = np.ascontiguousarray(g).ravel()[:256].copy()
        table = table if np.array_equal(cv2.LUT(y, table), g) else None
        if len(_LUMA_TABLES) >= 256:  # a long-running service meeting many frame sizes
            _LUMA_TABLES.clear()
        _LUMA_TABLES[key] = table
    return table


_CHROMA_TINT = 8  # a commonest chroma further than this from 128 is colour, not a faint tint: 128


def _common_chroma(frame, k: int) -> int:
    """The commonest value of chroma plane `k` (every 4th pixel of every 4th row), 128 unless near it."""
    p = frame.planes[k]
    c = int(np.bincount(_plane(frame, k)[::4, :p.width:4].ravel(), minlength=256).argmax())
    return c if abs(c - 128) <= _CHROMA_TINT else 128


def _video_image(frame, grey: bool) -> np.ndarray:
    if not grey:
        return _rgb(frame)
    table = _luma_table(frame)
    if table is None:
        return rgb_to_grey(_rgb(frame))
    import cv2

    return cv2.LUT(_plane(frame, 0)[:, :frame.width], table)


class VideoReader(MediaReader):
    """PyAV (FFmpeg) decoding, one frame at a time.

    The header's frame count is used only when it is within the limits; otherwise (or when there
    is none) the packets are counted, without decoding, up to the limit. Frame size is checked on
    the stream's header before anything decodes and on every decoded frame."""

    def __init__(self, path: Path, limits: MediaLimits | None = None):
        self.path = path
        self.limits = resolve_limits(limits)
        self._container = self._open()
        try:
            self.info = self._facts()
        except BaseException as e:
            self._container.close()
            if isinstance(e, MediaError) or not isinstance(e, Exception):
                raise
            raise MediaError(path, f"not a readable video ({_short(e)})") from None
        self._used = False

    def _open(self):
        import av

        try:
            return av.open(str(self.path))
        except Exception as e:  # FFmpeg's errors vary by format; all mean "not a readable video"
            raise MediaError(self.path, f"not a readable video ({_short(e)})") from None

    def _facts(self) -> MediaInfo:
        path, lim = self.path, self.limits
        if not self._container.streams.video:
            raise MediaError(path, "no video stream in the file")
        s = self._container.streams.video[0]  # read before counting packets, which reopens the file
        cc = s.codec_context
        width, height = int(cc.width or s.width or 0), int(cc.height or s.height or 0)
        codec = cc.name
        self._time_base = float(s.time_base) if s.time_base else None
        self._start = s.start_time or 0
        if problem := lim.frame_problem(width, height):  # before a single frame is decoded
            raise MediaError(path, problem)
        fps = float(s.average_rate or s.guessed_rate or 0) or None
        n = int(s.frames or 0)
        if self._container.format.name == "gif" and 0 < n <= lim.max_frames and s.duration and s.time_base:
            # GIF delays are whole 1/100 s, so 15 fps is stored as 7, 6, 7, ... and FFmpeg's
            # average_rate only looks at the first few; frames / duration is the true average.
            fps = n / float(s.duration * s.time_base) or fps
        if n <= 0 or n > lim.max_frames:  # none, or a header that may lie: count what is there
            n = self._count_packets(lim.max_frames + 1)
        if n <= 0:
            raise MediaError(path, "no frames could be read")
        if problem := lim.frames_problem(n) or lim.duration_problem(n, fps):
            raise MediaError(path, problem)
        return MediaInfo(str(path), "video", path.suffix.lower().lstrip(".") or codec, fps, n, width, height)

    def _count_packets(self, stop_at: int) -> int:
        # Containers such as MPEG-PS carry no frame count; demuxing (no decoding) is cheap.
        n = 0
        try:
            for p in self._container.demux(video=0):
                if p.size:
                    n += 1
                    if n >= stop_at:
                        break
        except Exception:
            pass
        self._container.close()  # a fresh demuxer rather than seek(0), which some files refuse
        self._container = self._open()
        return n

    def frames(self, indices=None, *, grey=False, rgb=()):
        wanted, last = _wanted(indices)
        rgb = set(rgb)
        if self._used:  # decode again from the start on a fresh demuxer
            self._container.close()
            self._container = self._open()
        self._used = True
        fps = self.info.fps or 25.0
        lim = self.limits
        i = -1
        try:
            for frame in self._container.decode(video=0):
                i += 1
                if problem := lim.frame_problem(frame.width, frame.height) or lim.frames_problem(i + 1):
                    raise MediaError(self.path, problem)  # a size or a length the header did not tell
                if (frame.width, frame.height) != (self.info.width, self.info.height):
                    raise MediaError(self.path, f"frame {i} is {frame.width}x{frame.height} pixels, the stream "
                                                f"header says {self.info.width}x{self.info.height}")
                if wanted is not None:
                    if i > last:
                        break
                    if i not in wanted:
                        continue
                has_pts = frame.pts is not None and self._time_base
                t = (frame.pts - self._start) * self._time_base if has_pts else i / fps
                yield Frame(i, float(max(t, 0.0)), _video_image(frame, grey and i not in rgb))
        except MediaError:
            raise
        except Exception as e:
            if i < 0:
                raise MediaError(self.path, f"not a readable video ({_short(e)})") from None
            # A truncated file: keep what decoded, as players do; the caller sees fewer frames.
            return

    def frames_at(self, targets):
        # A few frames of a long clip (the key frames of an analysis): decoding from the start to the
        # last of them costs as much as the frame pass did. Each is found by seeking to the key frame
        # before its time and decoding on to the frame with its timestamp (exactly the time `frames`
        # gave it, the same arithmetic on the same pts); frames decoded before the first key frame
        # after a seek are not used (an open GOP's leading frames may reference the GOP before).
        # Whatever is not found so (no timestamps, a file that will not seek, times clipped at 0) is
        # decoded from the start as `frames` does: the same frames either way.
        targets = {int(i): float(t) for i, t in targets.items()}
        found: dict[int, Frame] = {}
        if self._time_base and len(set(targets.values())) == len(targets) and min(targets.values(), default=0) > 0:
            try:
                found = self._seek_frames(targets)
            except MediaError:
                raise
            except Exception:  # a container or codec that does not seek well: decode from the start
                found = {}
        missing = sorted(set(targets) - set(found))
        if missing:
            found.update((f.index, f) for f in self.frames(missing))
        for i in sorted(found):
            yield found[i]

    def _seek_frames(self, targets: dict[int, float]) -> dict[int, Frame]:
        found: dict[int, Frame] = {}
        by_time = {t: i for i, t in targets.items()}
        lim = self.limits
        container = self._open()
        try:
            s = container.streams.video[0]
            # the key frames' timestamps (demuxing reads packets, decodes nothing): a target whose key
            # frame the decoder has passed is decoded on to, not sought again
            keys = sorted(p.pts for p in container.demux(s) if p.is_keyframe and p.pts is not None)
            if not keys:
                return found
            decoded, last = None, None
            for i in sorted(targets):
                if i in found:
                    continue
                pts = int(round(targets[i] / self._time_base)) + self._start
                key = max((k for k in keys if k <= pts), default=keys[0])
                if decoded is None or last is None or not key <= last < pts:
                    container.seek(key, stream=s, backward=True, any_frame=False)
                    decoded, keyed = container.decode(s), False
                for frame in decoded:
                    if frame.pts is None:
                        return found
                    if problem := lim.frame_problem(frame.width, frame.height):
                        raise MediaError(self.path, problem)
                    if (frame.width, frame.height) != (self.info.width, self.info.height):
                        return found  # the sequential decode says what is wrong
                    keyed = keyed or bool(frame.key_frame)
                    last = frame.pts
                    t = float(max((frame.pts - self._start) * self._time_base, 0.0))
                    j = by_time.get(t)
                    if keyed and j is not None and j not in found:
                        found[j] = Frame(j, t, _video_image(frame, False))
                    if frame.pts >= pts:
                        break
                else:
                    decoded = None  # the stream ended
        finally:
            container.close()
        return found

    def close(self):
        self._container.close()


class ImageReader(MediaReader):
    def __init__(self, path: Path, limits: MediaLimits | None = None):
        import warnings

        from PIL import Image, UnidentifiedImageError

        self.path = path
        self.limits = resolve_limits(limits)
        try:
            with warnings.catch_warnings():  # our own limit decides, not PIL's warning
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    if problem := self.limits.frame_problem(*im.size):  # the header's size, before decoding
                        raise MediaError(path, problem)
                    im.load()
                    self._image = _pil_to_rgb8(im)
        except MediaError:
            raise
        except UnidentifiedImageError:
            raise MediaError(path, "not a readable image (unknown or corrupt format)") from None
        except Exception as e:
            raise MediaError(path, f"not a readable image ({_short(e)})") from None
        h, w = self._image.shape[:2]
        if h < 1 or w < 1:
            raise MediaError(path, f"image of {w}x{h} pixels holds no image")
        self.info = MediaInfo(str(path), "image", path.suffix.lower().lstrip("."), None, 1, w, h)

    def frames(self, indices=None, *, grey=False, rgb=()):
        if indices is None or 0 in set(indices):
            yield Frame(0, 0.0, _as_asked(self._image, 0, grey, set(rgb)))


def _pil_to_rgb8(im) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_rgb8(np.array(im))
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGB")
    return to_rgb8(np.array(im))


class DicomReader(MediaReader):
    """Single-frame and multi-frame (cine) DICOM, uncompressed or compressed (JPEG etc.).

    The header is read in bounded time (no pixel data, large values left on disk); Rows x Columns
    are checked against the limits before any pixel is read, and the frame count is what the
    pixel data holds, never more than the header says: a cine cut short gives the frames before
    the cut."""

    def __init__(self, path: Path, limits: MediaLimits | None = None):
        self.path = path
        self.limits = lim = resolve_limits(limits)
        ds, pixels = _dicom_header(path)
        if pixels is None:
            raise MediaError(path, "DICOM file has no pixel data (a report or structured document, not an image)")
        try:
            rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
            n = int(ds.get("NumberOfFrames", 1) or 1)
            fps = dicom_fps(ds) if n > 1 else None
            self._photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
            spp = int(ds.get("SamplesPerPixel", 1) or 1)
            bits = int(ds.get("BitsAllocated", 8) or 8)
            syntax = getattr(ds.file_meta, "TransferSyntaxUID", None)
            encapsulated = bool(syntax is not None and syntax.is_encapsulated)
        except MediaError:
            raise
        except Exception as e:  # a value pydicom cannot parse (a fuzzed number, a missing meta tag)
            raise MediaError(path, f"not a readable DICOM file ({_short(e)})") from None
        if rows <= 0 or cols <= 0:
            raise MediaError(path, "DICOM image has no size (Rows/Columns missing)")
        if problem := lim.frame_problem(cols, rows):  # before a single pixel is read
            raise MediaError(path, problem)
        if n < 1:
            raise MediaError(path, f"DICOM NumberOfFrames is {n}")
        frame_bytes = max(1, rows * cols * max(spp, 1) * max(bits, 1) // 8)
        there = _dicom_frames_there(path, pixels, n, frame_bytes, encapsulated, lim.max_frames + 1)
        if there <= 0:
            raise MediaError(path, "DICOM pixel data holds no whole frame (truncated file)")
        if problem := lim.frames_problem(there) or lim.duration_problem(there, fps if there > 1 else None):
            raise MediaError(path, problem)
        self._header_frames = n
        fps = fps if there > 1 else None
        self.info = MediaInfo(str(path), "video" if there > 1 else "image", "dicom", fps, there, cols, rows,
                              n_frames_declared=n if there < n else None)

    def frames(self, indices=None, *, grey=False, rgb=()):
        from pydicom.pixels import iter_pixels

        wanted, last = _wanted(indices)
        rgb = set(rgb)
        fps = self.info.fps or 1.0
        n = self.info.n_frames
        # fewer frames than the header says (a cut file, a lying header): decode only those
        opts = {"number_of_frames": n} if n != self._header_frames else {}
        i = -1
        try:
            it = iter_pixels(self.path, as_rgb=True, **opts)
            for i, arr in enumerate(it):
                if i >= n or (wanted is not None and i > last):
                    break
                if wanted is not None and i not in wanted:
                    continue
                if problem := self.limits.frame_problem(arr.shape[1] if arr.ndim > 1 else 1, arr.shape[0]):
                    raise MediaError(self.path, problem)
                if self._photometric == "MONOCHROME1":  # MONOCHROME1 shows low values as white
                    arr = arr.max() - arr
                yield Frame(i, i / fps if n > 1 else 0.0, _as_asked(to_rgb8(arr), i, grey, rgb))
        except MediaError:
            raise
        except Exception as e:
            if i < 0:
                raise MediaError(self.path, f"DICOM pixel data cannot be decoded ({_short(e)})") from None
            return  # a damaged frame after good ones: keep what decoded, as for videos


_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
_MAX_HEADER_ELEMENTS = 100_000  # far more than any real header; a file of zeros would parse for ever
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


class _Stop:
    """`stop_when` for pydicom's reader: stops at the pixel data (noting where it is) and at
    group 0000, which no stored dataset holds (a run of zero bytes); counts elements."""

    def __init__(self, path: Path):
        self.path, self.count, self.pixels = path, 0, None

    def __call__(self, tag, vr, length) -> bool:
        self.count += 1
        if self.count > _MAX_HEADER_ELEMENTS:
            raise MediaError(self.path, f"not a readable DICOM file (more than {_MAX_HEADER_ELEMENTS} header elements)")
        if int(tag) in _PIXEL_TAGS:
            self.pixels = length
            return True
        return int(tag) >> 16 == 0


def _dicom_header(path: Path):
    """(header dataset without pixel data, (file offset of the pixel data element, its length) or
    None). Bounded time and memory whatever the file holds."""
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_partial

    stop = _Stop(path)
    try:
        with open(path, "rb") as f:
            head = f.read(134)
            if head[128:132] == b"DICM" and head[132:134] != b"\x02\x00":
                raise MediaError(path, "not a DICOM file (no file meta information after the DICM marker)")
            f.seek(0)
            ds = read_partial(f, stop_when=stop, defer_size=1 << 20, force=False)
            at = f.tell()
    except MediaError:
        raise
    except InvalidDicomError:
        raise MediaError(path, "not a DICOM file") from None
    except Exception as e:
        raise MediaError(path, f"not a readable DICOM file ({_short(e)})") from None
    return ds, (None if stop.pixels is None else (at, stop.pixels))


def _dicom_frames_there(path: Path, pixels: tuple[int, int], n: int, frame_bytes: int, encapsulated: bool,
                        cap: int) -> int:
    """How many of the header's `n` frames the file holds (at most `cap`): whole frames of native
    data before the end of the file; complete fragments of encapsulated data."""
    at, length = pixels
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(at + 4)
        vr = f.read(2)
        start = at + (12 if vr in _LONG_VRS else 8)
        if not encapsulated:
            there = (size - start) if length in (None, 0xFFFFFFFF) else min(length, size - start)
            return int(min(n, cap, max(there, 0) // frame_bytes))
        f.seek(start)
        items = 0
        while items <= cap + 1:  # item headers only, values skipped
            h = f.read(8)
            if len(h) < 8 or h[:4] != b"\xfe\xff\x00\xe0":  # an item tag (FFFE,E000), little endian
                break
            item_len = int.from_bytes(h[4:], "little")
            if f.seek(item_len, 1) > size:
                break  # cut inside this item
            items += 1
    fragments = max(items - 1, 0)  # the first item is the basic offset table
    return min(n, cap, fragments) if n > 1 else min(1, fragments)


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
    # FFmpeg's errors repeat the file name after the reason: the reason alone
    msg = getattr(e, "strerror", None) if getattr(e, "filename", None) else None
    msg = " ".join(str(msg or e).split()) or type(e).__name__
    return msg[:200]


def open_media(path: str | os.PathLike, limits: MediaLimits | None = None) -> MediaReader:
    """Open any supported recording; raises `MediaError` with a one-line reason otherwise (also
    for a file over `limits`: None takes `MediaLimits.from_env()`, the documented defaults unless
    POCOVID_MAX_* environment variables change them)."""
    path = Path(os.fsdecode(path))
    _check_file(path)
    ext = path.suffix.lower()
    try:
        if ext in (".dcm", ".dicom") or looks_like_dicom(path):
            return DicomReader(path, limits)
        if ext in IMAGE_EXTENSIONS:
            return ImageReader(path, limits)
        if ext in VIDEO_EXTENSIONS:
            return VideoReader(path, limits)
    except PocovidError:
        raise
    except Exception as e:  # a reader's failure nobody foresaw: still one line naming the file
        raise MediaError(path, f"cannot read ({type(e).__name__}: {_short(e)})") from None
    if ext == "":
        raise MediaError(path, "no file extension and not a DICOM file")
    raise MediaError(path, f"unsupported file type '{ext}' (videos: {_fmt(VIDEO_EXTENSIONS)}; "
                           f"images: {_fmt(IMAGE_EXTENSIONS)}; DICOM: .dcm)")


def _fmt(exts) -> str:
    return " ".join(sorted(e for e in exts if e))


def probe(path: str | os.PathLike, limits: MediaLimits | None = None) -> MediaInfo:
    """The facts of a recording (fps, frame count, size) without decoding its frames."""
    with open_media(path, limits) as r:
        return r.info


def read_frames(path: str | os.PathLike, indices: Iterable[int] | None = None,
                limits: MediaLimits | None = None) -> list[Frame]:
    """All (or the given) frames of a recording in memory: for short clips and tests."""
    with open_media(path, limits) as r:
        out = list(r.frames(indices))
    if not out:
        raise MediaError(path, "no frames could be decoded")
    return out


def sample_indices(n_frames: int, fps: float | None, rate_hz: float | None = None,
                   max_frames: int | None = None) -> list[int]:
    """Frame indices at `rate_hz` (every frame if None), at most `max_frames`, evenly spread.

    Deterministic: the same arguments always give the same indices. Only the returned indices
    are built, however large `n_frames` is.
    """
    if n_frames <= 0:
        return []
    step = fps / rate_hz if rate_hz and fps and rate_hz < fps else 1.0
    # the k-th frame at the rate; step > 1 keeps these strictly increasing and below n_frames
    count = int(math.floor((n_frames - 1) / step)) + 1 if step > 1 else n_frames
    if max_frames is not None and 0 < max_frames < count:
        ks = [int(round(p)) for p in np.linspace(0, count - 1, max_frames)]
    else:
        ks = range(count)
    if step == 1.0:
        return list(ks)
    return [min(int(round(k * step)), n_frames - 1) for k in ks]


def sample_frames(path: str | os.PathLike, rate_hz: float | None = None,
                  max_frames: int | None = None, limits: MediaLimits | None = None) -> list[Frame]:
    """Frames of a recording at `rate_hz`, at most `max_frames`, evenly spread over the clip."""
    with open_media(path, limits) as r:
        idx = sample_indices(r.info.n_frames, r.info.fps, rate_hz, max_frames)
        out = list(r.frames(idx))
    if not out:
        raise MediaError(path, "no frames could be decoded")
    return out
