"""Writing videos: every video file pocovid writes goes through `VideoWriter` (PyAV / FFmpeg).

    with VideoWriter("out.mp4", fps=25, width=640, height=480) as w:
        for rgb in frames:
            w.write(rgb)                     # (H, W, 3) uint8, one frame at a time
    write_video("clip.mp4", frames, fps)     # a whole clip at once

Containers come from the extension (`VIDEO_FORMATS`): .mp4 / .m4v / .mov / .mkv (H.264, yuv420p),
.avi (MPEG-4 part 2, or MJPEG with `codec="mjpeg"`), .mpeg / .mpg (MPEG-2 program stream), .webm
(VP9), .wmv (WMV2 in ASF), .gif (one global 256-colour palette; exact for grey frames).
"""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from pocovid.media.reader import to_rgb8

# extension -> (FFmpeg container, default encoder)
VIDEO_FORMATS = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".avi": ("avi", "mpeg4"),
    ".mpeg": ("mpeg", "mpeg2video"),
    ".mpg": ("mpeg", "mpeg2video"),
    ".webm": ("webm", "libvpx-vp9"),
    ".wmv": ("asf", "wmv2"),
    ".gif": ("gif", "gif"),
}

_QSCALE_CODECS = ("mpeg4", "mpeg2video", "mpeg1video", "mjpeg", "wmv2", "msmpeg4")  # fixed quantiser
_ANY_SIZE_CODECS = ("mjpeg", "gif")  # the others encode 4:2:0 and need an even width and height


def frame_rate(fps: float) -> Fraction:
    """`fps` as the exact rational rate a container stores: 29.97 -> 30000/1001, 15 -> 15/1."""
    fps = float(fps)
    if not fps > 0:
        raise ValueError(f"fps must be positive; got {fps}")
    ntsc = fps * 1001 / 1000  # 29.97 -> 30000/1001, 23.976 -> 24000/1001
    if abs(ntsc - round(ntsc)) < 1e-3 and abs(fps - round(fps)) > 1e-3:
        return Fraction(round(ntsc) * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


def video_format(path) -> tuple[str, str]:
    """(FFmpeg container, default encoder) for a video path; ValueError for other extensions."""
    ext = Path(path).suffix.lower()
    if ext not in VIDEO_FORMATS:
        raise ValueError(f"{path}: not a video extension (supported: {' '.join(sorted(VIDEO_FORMATS))})")
    return VIDEO_FORMATS[ext]


def as_rgb_stack(frames) -> np.ndarray:
    """(T, H, W, 3) uint8 from an array or a sequence of frames (grey or RGB)."""
    if isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[3] == 3:
        return np.ascontiguousarray(frames)
    colour = isinstance(frames, np.ndarray) and frames.ndim == 3 and frames.shape[2] in (3, 4)
    if isinstance(frames, np.ndarray) and frames.ndim in (2, 3) and not colour:
        frames = frames[None] if frames.ndim == 2 else frames  # one grey frame, or (T, H, W) grey
    elif isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = frames[None]  # one RGB(A) frame
    if len(frames) == 0:
        raise ValueError("no frames to write")
    out = np.stack([to_rgb8(np.asarray(f)) for f in frames])
    if out.ndim != 4:
        raise ValueError(f"frames must be a (T, H, W, 3) or (T, H, W) array or sequence; got {out.shape}")
    return out


class VideoWriter:
    """A video written frame by frame; the container comes from the extension (`VIDEO_FORMATS`).

    `codec` overrides the encoder (e.g. "mjpeg" for .avi, "mpeg4" for .mp4). `quality` is the
    H.264/VP9 CRF (lower is better; default 17 for H.264, 24 for VP9) or the MPEG/MJPEG quantiser
    (1-31; default 3); `preset` is the x264 preset. H.264, MPEG-2, MPEG-4, VP9 and WMV need an even
    width and height: odd sizes raise ValueError, or with `pad_to_even=True` each frame is padded
    with black on the right / bottom. GIF frames are kept until `close()`, which picks one palette
    for the whole clip. An encoder failure removes the file and raises ValueError. As a context
    manager the file is finished on a normal exit and removed when the block raises.
    """

    def __init__(self, path: str | os.PathLike, fps: float, width: int, height: int, *, codec: str | None = None,
                 quality: int | None = None, preset: str = "veryfast", pad_to_even: bool = False):
        import av

        self.path = Path(path)
        fmt, default_codec = video_format(self.path)
        self.codec = codec or default_codec
        self.rate = frame_rate(fps)
        self.frame_size = (int(height), int(width))
        W, H = self.frame_size[1], self.frame_size[0]
        self.pix_fmt = {"gif": "pal8", "mjpeg": "yuvj420p"}.get(self.codec, "yuv420p")
        if (H % 2 or W % 2) and self.codec not in _ANY_SIZE_CODECS:
            if not pad_to_even:
                raise ValueError(f"{self.path}: {self.codec} ({self.pix_fmt}) needs an even width and height; "
                                 f"got {W}x{H}")
            W, H = W + W % 2, H + H % 2
        self.width, self.height = W, H
        self.n_frames = 0
        self._gif_frames: list[np.ndarray] | None = [] if self.codec == "gif" else None
        options: dict[str, str] = {}
        if self.codec in ("libx264", "h264"):
            options = {"crf": str(17 if quality is None else quality), "preset": preset}
        elif self.codec == "libvpx-vp9":
            options = {"crf": str(24 if quality is None else quality), "b": "0", "deadline": "realtime",
                       "cpu-used": "8"}
        self._container = av.open(str(self.path), mode="w", format=fmt,
                                  options={"loop": "0"} if self.codec == "gif" else {})
        try:
            self._stream = self._container.add_stream(self.codec, rate=self.rate, options=options)
            self._stream.width, self._stream.height, self._stream.pix_fmt = W, H, self.pix_fmt
            cc = self._stream.codec_context
            cc.time_base = Fraction(self.rate.denominator, self.rate.numerator)
            if self.codec in _QSCALE_CODECS:
                cc.qscale = 3 if quality is None else int(quality)  # good quality whatever the frame size
                cc.bit_rate = max(2_000_000, int(W * H * float(self.rate) * 2))
            if self.codec == "mpeg2video":
                cc.gop_size = 12
        except Exception as e:  # noqa: BLE001 - FFmpeg's errors vary by codec; all mean "cannot encode this"
            self._fail(e)

    def write(self, rgb: np.ndarray) -> None:
        """Append one frame: (height, width, 3) uint8 RGB as declared (grey or other dtypes are
        converted as `to_rgb8` does)."""
        if self._container is None:
            raise ValueError(f"{self.path}: the video is closed")
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            rgb = to_rgb8(rgb)
        if rgb.shape[:2] != (self.height, self.width):
            if rgb.shape[:2] != self.frame_size:
                raise ValueError(f"{self.path}: frame {rgb.shape[1]}x{rgb.shape[0]} does not match the video's "
                                 f"{self.frame_size[1]}x{self.frame_size[0]}")
            pad = np.zeros((self.height, self.width, 3), np.uint8)
            pad[:rgb.shape[0], :rgb.shape[1]] = rgb
            rgb = pad
        if self._gif_frames is not None:
            self._gif_frames.append(np.array(rgb))
            self.n_frames += 1
            return
        import av

        self._encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"))

    def close(self) -> None:
        """Flush the encoder and finish the file (a second call does nothing)."""
        if self._container is None:
            return
        try:
            if self._gif_frames is not None:
                self._encode_gif()
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        except Exception as e:  # noqa: BLE001 - as in __init__
            self._fail(e)
        self._container.close()
        self._container = None

    def abort(self) -> None:
        """Stop without finishing: close the container and remove the partial file."""
        if self._container is not None:
            with contextlib.suppress(Exception):  # the file is removed anyway
                self._container.close()
            self._container = None
        with contextlib.suppress(OSError):
            os.remove(self.path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -------------------------------------------------------------------------------------------
    def _encode(self, frame) -> None:
        frame.pts = self.n_frames
        frame.time_base = self._stream.codec_context.time_base
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except Exception as e:  # noqa: BLE001 - as in __init__
            self._fail(e)
        self.n_frames += 1

    def _encode_gif(self) -> None:
        import av

        frames, self._gif_frames = self._gif_frames, None
        self.n_frames = 0
        if not frames:
            return
        idx, pal = _palette(np.stack(frames))
        argb = np.concatenate([np.full((256, 1), 255, np.uint8), pal], axis=1)
        for i in range(len(idx)):
            self._encode(av.VideoFrame.from_ndarray((np.ascontiguousarray(idx[i]), argb), format="pal8"))

    def _fail(self, e: Exception):
        self.abort()
        hint = " (MPEG-2 takes 10, 12.5, 15, 24, 25, 29.97, 30, 50 or 60 fps)" if self.codec == "mpeg2video" else ""
        raise ValueError(f"{self.path}: {self.codec} cannot encode {self.width}x{self.height} at "
                         f"{float(self.rate):g} fps{hint}: {' '.join(str(e).split())}") from None


def write_video(path, frames, fps, *, codec: str | None = None, quality: int | None = None) -> None:
    """Write a whole clip (RGB (T, H, W, 3), grey (T, H, W), or a sequence of frames) as a video;
    the container comes from the extension (see `VIDEO_FORMATS`, and `VideoWriter` for `codec`
    and `quality`)."""
    video_format(path)
    stack = as_rgb_stack(frames)
    T, H, W = stack.shape[:3]
    with VideoWriter(path, fps, W, H, codec=codec, quality=quality) as writer:
        for i in range(T):
            writer.write(stack[i])


def _palette(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (T, H, W) and one global 256-colour palette (256, 3) for the whole clip."""
    if np.array_equal(stack[..., 0], stack[..., 1]) and np.array_equal(stack[..., 0], stack[..., 2]):
        pal = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
        return stack[..., 0].copy(), pal  # grey: exact
    from PIL import Image

    T = len(stack)
    pick = stack[np.unique(np.linspace(0, T - 1, min(T, 4)).round().astype(int))]
    sample = Image.fromarray(np.concatenate(list(pick), axis=0))
    pimg = sample.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    idx = np.stack([np.asarray(Image.fromarray(f).quantize(palette=pimg, dither=Image.Dither.NONE)) for f in stack])
    pal = np.zeros((256, 3), np.uint8)
    p = np.asarray(pimg.getpalette()[:768], np.uint8).reshape(-1, 3)
    pal[:len(p)] = p
    return idx, pal
