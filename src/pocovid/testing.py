"""Helpers for tests and benchmarks, never for clinical use: nothing in the clinical package imports
this module (tests/test_layout.py checks).

- `quick_phantom_model`, `phantom_frames`: a small model trained in seconds on phantom clips, for
  when no trained model file is at hand. Pretrained frozen trunk (offline ImageNet weights), heads
  fitted on trunk features of phantom frames of each class, plus the feature density the OOD guard
  reads. Never a clinical model: it has only seen synthetic images.
- `blank`, `uniform_noise`, `gaussian_noise`, `text_screenshot`, `cardiac_like`, `abdominal_like`,
  `natural_images`, `generated_inputs`: inputs that are NOT lung ultrasound, generated on the spot:
  what the out-of-distribution guard must catch (tests and benchmarks/ood.py). Every image is RGB
  uint8 (H, W, 3).
- `write_bad_corpus`, `write_seed_files`, `mutations`, `check_files`, `fuzz`: hostile and odd
  recordings (decompression and frame-count bombs, truncations, header lies, bad DICOMs, odd file
  names, 1x1 images, empty files, a FIFO) and mutations of valid files of every format, each made
  on the spot; what tests/test_fuzz.py and benchmarks/fuzz.py feed the readers and the CLI. Each
  bomb is small on disk and would cost gigabytes decoded as its header says. From a shell:
  `python -m pocovid.testing fuzz DIR [N [SEED]]` or `corpus DIR`, one JSON line per file.
"""

from __future__ import annotations

import io
import os
import random
import struct
import zlib
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# ------------------------------------------------------------------------------- quick model


def phantom_frames(size: int, seeds=(0, 1, 2), n_frames: int = 8, width: int = 256, height: int = 224,
                   labels=("covid", "pneumonia", "regular"), groups: bool = False):
    """(N, size, size) grey model-size crops of phantom clips and their class index in `labels`,
    prepared as `analyze` prepares frames (scan region of the clip, crop, resize, grey)."""
    from pocovid.models import InputConfig
    from pocovid.phantom import make_phantom
    from pocovid.region import detect_scan_region

    cfg = InputConfig(size=size)

    xs, ys, gs = [], [], []
    for li, label in enumerate(labels):
        for s in seeds:
            p = make_phantom(label=label, n_frames=n_frames, width=width, height=height, overlays=bool(s % 2),
                             fps=10.0, seed=int(s), probe="convex" if s % 3 else "linear")
            region = detect_scan_region(p.frames)
            for f in p.frames:
                xs.append(cfg.pixels(region.crop(f)))
                ys.append(li)
                gs.append(int(s))
    if groups:
        return np.stack(xs), np.array(ys), np.array(gs)
    return np.stack(xs), np.array(ys)


def quick_phantom_model(size: int = 96, n_heads: int = 2, steps: int = 120, seed: int = 0,
                        classes=("covid", "pneumonia", "regular"), seeds=(0, 1, 2, 3, 4, 5), n_frames: int = 6,
                        findings=(), severity_levels: int = 0):
    """A `FrameClassifier` (efficientnet_lite0, pretrained trunk) whose class heads are fitted on phantom
    frames at `size` pixels; `meta["extra"]["feature_density"]` is set from the same frames. `findings`
    and `severity_levels` add those heads, untrained (outputs to show, never clinical: an exam's
    severity, LUS score and findings in tests)."""
    from pocovid.models import FeatureDensity, create_model, fit_feature_density

    torch.manual_seed(seed)
    model = create_model("efficientnet_lite0", list(classes), n_heads=n_heads, pretrained=True,
                         findings=tuple(findings), severity_levels=severity_levels)
    model.input_size = size
    grey, y, groups = phantom_frames(size, seeds=seeds, n_frames=n_frames, labels=classes, groups=True)
    model.eval()
    with torch.no_grad():
        h = torch.cat([model.forward_trunk(model.input_tensor(grey[i:i + 64]))
                       for i in range(0, len(grey), 64)])
    yt = torch.from_numpy(y)
    rng = np.random.default_rng(seed)
    for head in model.heads:
        head.train()
        opt = torch.optim.Adam(head.parameters(), lr=2e-3, weight_decay=1e-4)
        for _ in range(steps):
            b = torch.from_numpy(rng.choice(len(y), size=min(32, len(y)), replace=False))
            loss = F.cross_entropy(head(h[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
    model.eval()
    model.training_config = {"size": size, "rate_hz": None, "crop": True}
    pooled = h.float().mean((2, 3)).numpy()
    density = fit_feature_density(pooled)
    # quantiles of d^2 on frames the density did not see (cross-fitted over phantom "patients"):
    # with so few frames, in-sample quantiles would make every new clip look far away
    held = []
    for g in np.unique(groups):
        fd = FeatureDensity(fit_feature_density(pooled[groups != g]))
        held.append(fd.d2(pooled[groups == g]))
    held = np.concatenate(held)
    density["d2_train"] = {name: float(np.percentile(held, q)) for name, q in
                           (("q50", 50), ("q95", 95), ("q99", 99), ("q999", 99.9))}
    model.meta = {"extra": {"feature_density": density},
                  "training_config": model.training_config, "source": "quick phantom model (tests only)"}
    return model


def save_quick_model(model, path: str | os.PathLike, **kw) -> Path:
    """`model` (a `quick_phantom_model`, perhaps changed) saved as a model file at `path`, with its
    training config, feature density and a "phantom" data fingerprint; `kw` go to `save_model`."""
    from pocovid.models import save_model

    save_model(model, path, training_config=model.training_config, data_fingerprint="phantom",
               extra=model.meta["extra"], **kw)
    return Path(path)


# ------------------------------------------------------------------------------- non-lung inputs


def blank(h: int = 480, w: int = 640, value: int = 0) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def uniform_noise(h: int = 480, w: int = 640, seed: int = 0, colour: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if colour:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.repeat(rng.integers(0, 256, (h, w, 1), dtype=np.uint8), 3, axis=2)


def gaussian_noise(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = np.clip(rng.normal(110, 45, (h, w)), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


_WORDS = ("patient", "report", "findings", "lung", "ultrasound", "bilateral", "pleural", "normal",
          "the", "of", "and", "was", "with", "no", "evidence", "impression", "date", "exam", "view")


def text_screenshot(h: int = 600, w: int = 800, seed: int = 0, dark: bool = False) -> np.ndarray:
    """A screenshot of a document or an e-mail: lines of text on a light (or dark-mode) background."""
    rng = np.random.default_rng(seed)
    bg, fg = ((30, 30, 34), (220, 220, 220)) if dark else ((250, 250, 250), (20, 20, 20))
    img = np.full((h, w, 3), bg, np.uint8)
    cv2.rectangle(img, (0, 0), (w, 40), (60, 90, 160) if not dark else (50, 50, 60), -1)  # title bar
    cv2.putText(img, "Report - Lung ultrasound", (12, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    y = 75
    while y < h - 10:
        x = 15
        while True:
            word = _WORDS[rng.integers(len(_WORDS))]
            (tw, _), _ = cv2.getTextSize(word, cv2.FONT_HERSHEY_SIMPLEX, 0.55, 1)
            if x + tw > w - 15:
                break
            cv2.putText(img, word, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55, fg, 1, cv2.LINE_AA)
            x += tw + 9
        y += 24
    return img


def _fan(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convex-probe fan mask and polar coordinates (depth 0..1, angle -1..1) of every pixel."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w / 2, -0.25 * h
    r = np.hypot(xx - cx, yy - cy)
    ang = np.arctan2(xx - cx, yy - cy)
    r0, r1, a = 0.3 * h, 1.2 * h, 0.6
    depth = (r - r0) / (r1 - r0)
    inside = (depth >= 0) & (depth <= 1) & (np.abs(ang) <= a)
    return inside, depth, ang / a


def _speckle(h: int, w: int, rng: np.random.Generator, sigma: float = 1.2) -> np.ndarray:
    z = rng.normal(size=(h, w)) + 1j * rng.normal(size=(h, w))
    s = np.abs(ndimage.gaussian_filter(z.real, sigma) + 1j * ndimage.gaussian_filter(z.imag, sigma))
    return s / s.mean()


def cardiac_like(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    """A synthetic apical four-chamber-like view: a fan with four large anechoic chambers and
    bright, thick walls and septa (nothing of a lung's pleura, A- or B-lines)."""
    rng = np.random.default_rng(seed)
    inside, depth, lat = _fan(h, w)
    tissue = 0.55 + 0.1 * rng.normal(size=(h, w))
    img = 70 * tissue
    chambers = [(-0.35, 0.35, 0.28, 0.22), (0.35, 0.35, 0.26, 0.2), (-0.33, 0.72, 0.25, 0.15), (0.33, 0.72, 0.24, 0.15)]
    walls = np.zeros((h, w), np.float32)
    for cx, cy, rx, ry in chambers:
        e = ((lat - cx) / rx) ** 2 + ((depth - cy) / ry) ** 2
        walls = np.maximum(walls, np.exp(-((np.sqrt(e) - 1.08) / 0.08) ** 2))
        img = np.where(e < 1, 6.0, img)
    img = img + 190 * walls
    img = img * _speckle(h, w, rng) * inside
    g = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def abdominal_like(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    """A synthetic liver-like view: homogeneous mid-grey parenchyma filling the fan from the top,
    a dark tubular vessel, a bright curved diaphragm deep down (no pleural line near the probe)."""
    rng = np.random.default_rng(seed)
    inside, depth, lat = _fan(h, w)
    img = 95 + 8 * ndimage.gaussian_filter(rng.normal(size=(h, w)), 12) * 10
    vessel = np.exp(-((depth - 0.45 - 0.12 * lat) / 0.05) ** 2)
    img = img * (1 - 0.9 * vessel)
    diaphragm = np.exp(-((depth - 0.85 + 0.1 * lat ** 2) / 0.02) ** 2)
    img = img + 150 * diaphragm
    img = img * _speckle(h, w, rng, 1.0) * inside * (1 - 0.35 * depth)
    g = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def natural_images() -> dict[str, np.ndarray]:
    """The photographs scikit-image ships (no download), as RGB uint8."""
    from skimage import data

    from pocovid.media import to_rgb8

    out = {}
    for name in ("astronaut", "chelsea", "coffee", "camera", "rocket", "coins", "moon", "page", "text",
                 "hubble_deep_field", "immunohistochemistry", "retina", "cat", "horse", "grass", "gravel"):
        fn = getattr(data, name, None)
        if fn is None:
            continue
        try:
            a = np.asarray(fn())
        except Exception:  # noqa: BLE001, S112 - a data file that needs a download (pooch) is not available offline
            continue
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        out[name] = to_rgb8(a)
    return out


def generated_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Every generated non-lung input, by name."""
    return {
        "blank_black": blank(value=0), "blank_grey": blank(value=128), "blank_white": blank(value=255),
        "uniform_noise": uniform_noise(seed=seed), "uniform_noise_colour": uniform_noise(seed=seed, colour=True),
        "gaussian_noise": gaussian_noise(seed=seed), "text_screenshot": text_screenshot(seed=seed),
        "text_screenshot_dark": text_screenshot(seed=seed, dark=True), "cardiac_like": cardiac_like(seed=seed),
        "abdominal_like": abdominal_like(seed=seed),
    }


# ------------------------------------------------------------------------------- seed files


def _frames(n: int = 6, width: int = 64, height: int = 48, seed: int = 3) -> np.ndarray:
    from pocovid.phantom import make_phantom

    return make_phantom(label="covid", width=width, height=height, n_frames=n, fps=10.0, seed=seed).frames


def write_seed_files(folder: str | os.PathLike, width: int = 64, height: int = 48,
                     n_frames: int = 6) -> dict[str, Path]:
    """Small valid files of every format the readers take: {format: path}."""
    from PIL import Image

    from pocovid.phantom import write_dicom, write_video

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    fr = _frames(n_frames, width, height)
    out = {}
    for ext, opts in (("mp4", {}), ("avi", {}), ("gif", {}), ("webm", {}), ("mpeg", {})):
        write_video(p := d / f"seed.{ext}", fr, 10.0, **opts)
        out[ext] = p
    write_video(p := d / "seed_mjpeg.avi", fr, 10.0, codec="mjpeg")
    out["mjpeg"] = p
    for ext in ("png", "jpg", "bmp", "tif"):
        Image.fromarray(fr[0]).save(p := d / f"seed.{ext}")
        out[ext] = p
    write_dicom(p := d / "seed.dcm", fr, 10.0)
    out["dcm"] = p
    write_dicom(p := d / "seed_jpeg.dcm", fr, 10.0, compressed=True)
    out["dcm_jpeg"] = p
    write_rle_dicom(p := d / "seed_rle.dcm", fr[..., 0])
    out["dcm_rle"] = p
    return out


# ------------------------------------------------------------------------------- DICOM helpers


def _dicom_dataset(rows: int, cols: int, n_frames: int, transfer_syntax: str):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(rows), str(cols), str(n_frames)])
    meta.TransferSyntaxUID = transfer_syntax
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if n_frames != 1:
        ds.NumberOfFrames = n_frames
        ds.FrameTime = 100.0
    return ds


def _rle_frame(grey: np.ndarray) -> bytes:
    """One 8-bit frame as a DICOM RLE frame (PackBits, literal runs only)."""
    raw = np.ascontiguousarray(grey, np.uint8).tobytes()
    seg = bytearray()
    for row in range(grey.shape[0]):
        line = raw[row * grey.shape[1]:(row + 1) * grey.shape[1]]  # RLE runs never cross rows
        for i in range(0, len(line), 128):
            chunk = line[i:i + 128]
            seg += bytes([len(chunk) - 1]) + chunk
    if len(seg) % 2:
        seg += b"\x00"
    return struct.pack("<16I", 1, 64, *([0] * 14)) + bytes(seg)


def write_rle_dicom(path: str | os.PathLike, frames: np.ndarray, rows: int | None = None, cols: int | None = None,
                    n_frames: int | None = None) -> Path:
    """(T, H, W) grey frames as an RLE Lossless DICOM; rows / cols / n_frames can lie."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    frames = np.asarray(frames, np.uint8)
    T, H, W = frames.shape
    ds = _dicom_dataset(rows or H, cols or W, n_frames if n_frames is not None else T, RLELossless)
    ds.PixelData = encapsulate([_rle_frame(f) for f in frames])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def write_native_dicom(path: str | os.PathLike, pixel_bytes: bytes, rows: int, cols: int, n_frames: int) -> Path:
    """Explicit VR Little Endian 8-bit grey DICOM whose header says rows x cols x n_frames,
    whatever `pixel_bytes` holds."""
    from pydicom.uid import ExplicitVRLittleEndian

    ds = _dicom_dataset(rows, cols, n_frames, ExplicitVRLittleEndian)
    ds.PixelData = pixel_bytes + (b"\x00" if len(pixel_bytes) % 2 else b"")
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


# ------------------------------------------------------------------------------- bombs


def gif_screen_bomb(size: int = 16000) -> bytes:
    """A 1x1 GIF whose logical screen is `size` x `size` (a decoder may allocate the screen)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("P", (1, 1)).save(buf, format="GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", size, size)
    return bytes(data)


def png_bomb(size: int = 13000) -> bytes:
    """A `size` x `size` grey PNG of zeros: well under a megabyte, `size`^2 bytes decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\x00" * (size + 1)  # filter byte + pixels
    parts = [z.compress(row * 64) for _ in range(size // 64)]
    parts += [z.compress(row * (size % 64)), z.flush()]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def avi_frame_count_lie(avi: bytes, n_frames: int = 200_000_000) -> bytes:
    """An AVI whose main and stream headers claim `n_frames` frames."""
    data = bytearray(avi)
    i = data.find(b"avih")
    if i >= 0:
        data[i + 8 + 16:i + 8 + 20] = struct.pack("<I", n_frames)  # dwTotalFrames
    i = data.find(b"strh")
    if i >= 0:
        data[i + 8 + 32:i + 8 + 36] = struct.pack("<I", n_frames)  # dwLength
    return bytes(data)


def write_h264_8k(path: str | os.PathLike, n_frames: int = 3, width: int = 7680, height: int = 4320) -> Path:
    """A tiny-on-disk 8K H.264 clip (dark frames): legal, but 100 MB per decoded RGB frame."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "40"}
        img = np.zeros((height, width, 3), np.uint8)
        img[height // 4:3 * height // 4, width // 4:3 * width // 4] = 40
        for k in range(n_frames):
            img[height // 2, :width // 2 + k * 8] = 200
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return Path(path)


# ------------------------------------------------------------------------------- the corpus


def write_bad_corpus(folder: str | os.PathLike, big: bool = True) -> dict[str, Path]:
    """Hostile and odd files, {case: path}. `big=False` leaves out the files that take seconds to
    write (the 8K H.264 clip)."""
    from PIL import Image

    from pocovid.phantom import write_dicom, write_video

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    fr = _frames(20, 64, 48)
    out: dict[str, Path] = {}

    def put(name: str, data: bytes, key: str | None = None) -> None:
        (p := d / name).write_bytes(data)
        out[key or Path(name).stem] = p

    # bombs
    put("bomb_gif_screen.gif", gif_screen_bomb())
    put("bomb_png_13000.png", png_bomb())
    write_video(tmp := d / "tmp.avi", fr[:4], 10.0)
    put("bomb_avi_frames.avi", avi_frame_count_lie(tmp.read_bytes()))
    tmp.unlink()
    write_rle_dicom(p := d / "bomb_rle_30000.dcm", fr[:1, ..., 0], rows=30000, cols=30000)
    out[p.stem] = p
    write_rle_dicom(p := d / "bomb_dicom_frames.dcm", fr[:2, ..., 0], n_frames=1_000_000_000)
    out[p.stem] = p
    write_native_dicom(p := d / "bomb_native_lie.dcm", b"\x00" * 4096, rows=30000, cols=30000, n_frames=50)
    out[p.stem] = p
    if big:
        write_h264_8k(p := d / "big_h264_8k.mp4")
        out[p.stem] = p
    # truncations
    write_dicom(tmp := d / "tmp.dcm", fr, 10.0)
    put("trunc_dicom_95.dcm", tmp.read_bytes()[: int(tmp.stat().st_size * 0.95)])
    put("trunc_dicom_header.dcm", tmp.read_bytes()[:300])
    tmp.unlink()
    write_dicom(tmp, fr, 10.0, compressed=True)
    put("trunc_dicom_jpeg_90.dcm", tmp.read_bytes()[: int(tmp.stat().st_size * 0.9)])
    tmp.unlink()
    write_video(tmp := d / "tmp.mp4", fr, 10.0)
    put("trunc_mp4_half.mp4", tmp.read_bytes()[: tmp.stat().st_size // 2])
    put("trunc_mp4_head.mp4", tmp.read_bytes()[:64])
    tmp.unlink()
    Image.fromarray(fr[0]).save(buf := io.BytesIO(), format="PNG")
    put("trunc_png.png", buf.getvalue()[: len(buf.getvalue()) // 2])
    # header lies and bad DICOMs
    put("dicm_zeros.dcm", b"\x00" * 128 + b"DICM" + b"\x00" * 1_000_000)
    put("dicm_at_start", b"DICM" + b"\x00" * 1_000_000)
    put("dicm_ff.dcm", b"\x00" * 128 + b"DICM" + b"\xff" * 100_000)
    write_native_dicom(p := d / "dicom_short_pixels.dcm", b"\x7f" * 1000, rows=48, cols=64, n_frames=5)
    out[p.stem] = p
    write_native_dicom(p := d / "dicom_zero_rows.dcm", b"\x7f" * 64, rows=0, cols=64, n_frames=1)
    out[p.stem] = p
    put("text_as.png", b"not an image\n" * 10, "text_as_png")
    put("text_as.dcm", b"not a dicom file\n" * 10, "text_as_dcm")
    put("text_as.gif", b"GIF89a" + b"\x00" * 7, "text_as_gif")
    # tiny images
    Image.new("RGB", (1, 1), (90, 90, 90)).save(p := d / "one_pixel.png")
    out[p.stem] = p
    Image.new("L", (1, 1), 90).save(p := d / "one_pixel.gif")
    out["one_pixel_gif"] = p
    write_dicom(p := d / "one_pixel.dcm", np.full((1, 1, 1, 3), 90, np.uint8), 10.0)
    out["one_pixel_dcm"] = p
    Image.new("RGB", (1, 40), (90, 90, 90)).save(p := d / "one_column.png")
    out[p.stem] = p
    # empty, not regular
    put("empty.mp4", b"")
    put("empty.dcm", b"", "empty_dcm")
    fifo = d / "fifo.mp4"
    if hasattr(os, "mkfifo"):
        os.mkfifo(fifo)
        out["fifo"] = fifo
    if os.path.exists("/dev/zero"):
        (p := d / "zero.dcm").symlink_to("/dev/zero")
        out["dev_zero"] = p
    (p := d / "folder.mp4").mkdir()
    out["folder"] = p
    # odd names (a good file under each)
    write_video(good := d / "good.mp4", fr[:6], 10.0)
    for name, key in ((b"scan \xff\xfe latin.mp4", "name_not_utf8"), ("scan\nnewline.mp4".encode(), "name_newline"),
                      ("scan ünïcödé 肺.mp4".encode(), "name_unicode"), (b"-dash.mp4", "name_dash")):
        p = Path(os.fsdecode(os.path.join(os.fsencode(d), name)))
        p.write_bytes(good.read_bytes())
        out[key] = p
    good.unlink()
    return out


# ------------------------------------------------------------------------------- mutations

_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random mutation: bit flips, interesting integers, a cut, a removed / repeated / random
    block; mostly near the start, where the headers are."""
    b = bytearray(data)
    n = len(b)
    if n == 0:
        return bytes(b)

    def pos() -> int:  # headers matter most: half the positions in the first 512 bytes
        return rng.randrange(min(n, 512)) if rng.random() < 0.5 else rng.randrange(n)

    op = rng.randrange(7)
    if op == 0:
        for _ in range(rng.randint(1, 8)):
            i = pos()
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1:
        i = pos()
        v = rng.choice(_INTERESTING)
        width = rng.choice((1, 2, 4))
        b[i:i + width] = (v & ((1 << (8 * width)) - 1)).to_bytes(width, rng.choice(("little", "big")))
    elif op == 2 and n > 1:
        b = b[: rng.randrange(1, n)]
    elif op == 3:
        i = pos()
        del b[i:i + rng.randint(1, 64)]
    elif op == 4:
        i, j = pos(), pos()
        b[j:j] = b[i:i + rng.randint(1, 256)]
    elif op == 5:
        i = pos()
        b[i:i + 16] = rng.randbytes(16)
    else:
        for _ in range(rng.randint(2, 5)):
            b = bytearray(mutate(bytes(b), rng))
    return bytes(b)


def mutations(data: bytes, n: int, seed: int = 0) -> Iterator[bytes]:
    """`n` mutated copies of `data`, the same for the same seed."""
    rng = random.Random(seed)
    for _ in range(n):
        yield mutate(data, rng)


# ------------------------------------------------------------------------------- checking files


def _reset_peak_rss() -> bool:
    try:  # Linux: writing 5 resets the process's peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def read_like_analyze(path: str | os.PathLike) -> int:
    """What `analyze` asks of the readers, without a model: the file's facts, its scan region,
    every frame cropped and resized to 96 px, then every frame again in full (the overlay video).
    Returns the number of frames. Raises `MediaError` for a file that cannot be read."""
    from pocovid.media import open_media
    from pocovid.region import clip_region
    from pocovid.region.frames import iter_clip_frames

    with open_media(path) as r:
        info = r.info
    region = clip_region(path)
    n = sum(1 for _ in iter_clip_frames(path, region, size=96))
    with open_media(path) as r:
        for f in r:
            assert f.image.shape == (info.height, info.width, 3), (f.image.shape, info)
    return n


def check_files(paths, reader=read_like_analyze) -> list[dict]:
    """Each file through `reader`: {path, outcome ('ok' | 'error' | 'crash'), message, frames (what
    `reader` returned), seconds, peak_rss (bytes, peak of this process while reading that file)}. A `PocovidError` is an
    'error' (its message kept); anything else is a 'crash', the bug this corpus hunts."""
    import time
    import traceback

    from pocovid.errors import PocovidError

    rows = []
    for p in paths:
        _reset_peak_rss()
        t0 = time.perf_counter()
        frames = None
        try:
            frames = reader(p)
            outcome, msg = "ok", ""
        except PocovidError as e:
            outcome, msg = "error", str(e)
        except Exception as e:  # noqa: BLE001 - the point: any other exception is a finding
            outcome, msg = "crash", f"{type(e).__name__}: {e} | " + " ".join(traceback.format_exc().split())[-600:]
        rows.append(dict(path=os.fsdecode(p), outcome=outcome, message=msg, frames=frames,
                         seconds=time.perf_counter() - t0, peak_rss=_peak_rss_bytes()))
    return rows


def read_all_frames(path: str | os.PathLike) -> int:
    """The readers alone: the file's facts, then every frame (fast: what the fuzz test asks)."""
    from pocovid.media import open_media

    with open_media(path) as r:
        info = r.info
        n = 0
        for f in r:
            assert f.image.dtype == np.uint8 and f.image.shape == (info.height, info.width, 3), (f.image.shape, info)
            n += 1
    return n


def fuzz(folder: str | os.PathLike, per_format: int, seed: int = 0, formats=None,
         reader=read_all_frames) -> list[dict]:
    """`per_format` mutations of each seed file (`write_seed_files`), each written to `folder` and
    read with `reader` (`check_files` rows, plus 'format')."""
    d = Path(folder)
    seeds = write_seed_files(d / "seeds")
    rows = []
    for k, (fmt, src) in enumerate(sorted(seeds.items())):
        if formats and fmt not in formats:
            continue
        data = src.read_bytes()
        target = d / f"mutant{src.suffix}"
        for j, mutant in enumerate(mutations(data, per_format, seed=seed * 1000 + k)):
            target.write_bytes(mutant)
            (row,) = check_files([target], reader)
            row.update(format=fmt, mutation=j)
            rows.append(row)
    return rows


def _main(argv=None) -> None:
    """python -m pocovid.testing fuzz DIR [N [SEED]] | corpus DIR: one JSON line per file."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) >= 2 and args[0] == "fuzz":
        n = int(args[2]) if len(args) > 2 else 200
        rows = fuzz(args[1], n, int(args[3]) if len(args) > 3 else 0)
    elif len(args) >= 2 and args[0] == "corpus":
        files = write_bad_corpus(args[1], big="--small" not in args)
        rows = check_files(sorted(files.values()), read_like_analyze)
    else:
        raise SystemExit(_main.__doc__)
    for r in rows:
        print(json.dumps(r, ensure_ascii=True), flush=True)


if __name__ == "__main__":
    _main()
