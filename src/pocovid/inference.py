"""Running a trained model on a recording: the one frame pass that analyze, evaluate and the
service share.

    model = load("default")                                  # or a model file
    rec = stream_predict("scan.mp4", model, cams=True)       # every frame, streamed
    rec.probs, rec.outputs.cams, rec.region, rec.time_s

The pass: scan region of the clip (the runtime is built meanwhile) -> every sampled frame decoded,
cropped to the region and turned into the model's pixels (`model.input_config`) in a decode thread
-> the model in batches in the calling thread (decode overlaps the model) -> per-frame
`FrameOutput`s. Full-resolution frames are never all in memory. Both helper threads belong to a
pool that is always joined before the call returns: no thread outlives it, whatever happens.

The model runs on a runtime (`runtime=`: torch, onnx, openvino or auto; models/runtime.py), each with
the model's own `infer` contract; `export_model` writes the ONNX file of `pocovid export`.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pocovid.errors import PocovidError
from pocovid.files import path_text
from pocovid.media import Frame, MediaError, MediaInfo, MediaLimits, open_media, sample_indices
from pocovid.models.outputs import FrameOutput
from pocovid.models.preprocess import is_blank
from pocovid.models.runtime import get_runtime, runtime_name
from pocovid.region import ScanRegion, clip_region, iter_clip_frames

DEFAULT_MODEL_FILE = Path(__file__).parent / "assets" / "default_model.pt"
PIXELS_IN_MEMORY = 256 * 2**20  # kept pixels beyond this go to an anonymous temporary file
COMPILE_MIN_FRAMES = 5  # fewer frames run on the eager trunk rather than wait for tracing or export
CALIBRATION_FRAMES = 256  # int8 export: frames of the calibration recordings, at most


def model_path(spec: str | os.PathLike) -> Path:
    """'default' -> the model shipped inside the package; anything else is a path."""
    if str(spec) == "default":
        if not DEFAULT_MODEL_FILE.is_file():
            raise PocovidError(f"{DEFAULT_MODEL_FILE}: the bundled model is missing from this installation")
        return DEFAULT_MODEL_FILE
    p = Path(spec)
    if not p.exists():
        raise PocovidError(f"{p}: no such model file")
    return p


def load(spec: str | os.PathLike = "default"):
    """A trained `FrameClassifier` from 'default' or a model file, in eval mode."""
    from pocovid.models import load_model
    from pocovid.models.graph_model import file_sha256

    path = model_path(spec)
    m = load_model(path)
    m.eval()
    m.meta = dict(m.meta or {}, source=str(spec))
    m.file_sha256 = file_sha256(path)  # what a later run finds its cached graph by (models/graph_model.py)
    return m


def load_for_runtime(spec: str | os.PathLike, runtime: str):
    """`load(spec)`, or on a graph runtime (onnx, openvino, auto) the model as its cached graph
    when an earlier run left one for this very file (`GraphModel`: no PyTorch import, ~1 s less)."""
    from pocovid.models.graph_model import cached_graph_model

    return cached_graph_model(model_path(spec), runtime, str(spec)) or load(spec)


@dataclass
class RecordingOutputs:
    """The model's outputs on the analysed frames of one recording.

    index, time_s: (N,) frame number in the recording and its time
    outputs:       `FrameOutput` of numpy arrays, one row per analysed frame
    pixels:        (N, S, S) the model's input pixels, when asked for (Grad-CAM needs them)
    inspected:     what the `inspect` callback returned, in frame order
    """

    path: str
    info: MediaInfo
    region: ScanRegion
    index: np.ndarray
    time_s: np.ndarray
    outputs: FrameOutput
    pixels: np.ndarray | None = None
    inspected: list = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    n_planned: int = 0  # frames the sampling asked for; more than decoded when the file is cut short
    # sampled frames left out because they show nothing (`is_blank`: a black first frame); when every
    # frame is blank they are analysed all the same (up to a batch), so the guard can say so
    n_blank: int = 0
    runtime: str = ""  # the runtime the model ran on: torch, onnx or openvino
    precision: str = "fp32"  # its precision: fp32, bf16 (openvino-bf16) or int8 (an int8 graph file)

    @property
    def probs(self) -> np.ndarray:
        """(N, C) the ensemble's frame probabilities."""
        return self.outputs.probs

    @property
    def member_probs(self) -> np.ndarray:
        """(N, M, C) every member's frame probabilities."""
        return self.outputs.member_probs

    def __len__(self) -> int:
        return len(self.index)


class _Timer(dict):
    def add(self, key: str, t0: float) -> None:
        self[key] = self.get(key, 0.0) + time.perf_counter() - t0


_END = object()


def stream_predict(recording: str | os.PathLike, model, *, rate_hz: float | None = None,
                   max_frames: int | None = None, crop: bool | None = None, cams: bool = False,
                   keep_pixels: bool = False, batch_size: int = 32,
                   inspect: Callable[[Frame, np.ndarray, ScanRegion], Any] | None = None, n_inspect: int = 8,
                   progress: Callable[[float], None] | None = None,
                   limits: MediaLimits | None = None, runtime="torch") -> RecordingOutputs:
    """The model on the frames of one recording (video, image or DICOM), streamed.

    rate_hz / max_frames: frames per second analysed / at most this many, evenly spread (None:
    every frame / no limit); crop: cut each frame to the clip's scan region (None: as the model was
    trained); cams: the class activation maps too; keep_pixels: keep the model's input pixels;
    inspect(frame, pixels, region): called in the decode thread on `n_inspect` frames spread over
    the clip (e.g. image checks on the original frame), its returns kept in order; limits: pixels
    per frame, frames, duration (None: `MediaLimits.from_env()`); runtime: where the model runs
    (torch, onnx, openvino, auto, or a runtime object: `pocovid.models.runtime`; a missing one
    falls back to torch).
    Raises `MediaError` (one line) when the recording cannot be read or is over the limits."""
    path = Path(recording)
    cfg = model.input_config
    crop = cfg.crop if crop is None else bool(crop)
    timer = _Timer()
    t0 = time.perf_counter()
    limits = MediaLimits.from_env() if limits is None else limits  # read once for the whole pass
    with open_media(path, limits) as reader:  # the sampling plan; opening also checks the file early
        info = reader.info
    idx = sample_indices(info.n_frames, info.fps, rate_hz, max_frames)
    timer.add("open_s", t0)
    if runtime == "auto":  # measured (once per machine and model) while nothing else runs
        t0 = time.perf_counter()
        runtime = runtime_name(model, runtime, len(idx) >= COMPILE_MIN_FRAMES)
        timer.add("runtime_choice_s", t0)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="pocovid") as pool:
        # building the runtime (tracing the trunk, or reading / exporting the graph) overlaps the region
        # search, and then the first frames' decoding
        engine = pool.submit(get_runtime, model, runtime, len(idx) >= COMPILE_MIN_FRAMES)
        region = _region(path, crop, limits)
        timer.add("region_s", t0)
        t0 = time.perf_counter()
        out = _run(path, model, info, region, idx, engine, pool, timer, cams, keep_pixels, batch_size,
                   inspect, n_inspect, progress, limits)
        timer.add("frames_s", t0)
    out.timings = {k: round(v, 3) for k, v in timer.items()}
    return out


def predict_recording(model, recording: str | os.PathLike, rate_hz: float | None = None,
                      max_frames: int | None = None, crop: bool | None = None) -> RecordingOutputs:
    """`stream_predict` sampling frames as the model's training did (unless told otherwise)."""
    cfg = model.input_config
    return stream_predict(recording, model, rate_hz=cfg.rate_hz if rate_hz is None else rate_hz,
                          max_frames=cfg.max_frames if max_frames is None else max_frames, crop=crop)


def calibration_pixels(model, recordings, max_frames: int = CALIBRATION_FRAMES,
                       limits: MediaLimits | None = None) -> np.ndarray:
    """(N, S, S) model pixels of real frames for int8 calibration: the recordings' frames sampled
    and prepared as the frame pass prepares them (scan region, `model.input_config`), at most
    `max_frames` in all, spread evenly over the recordings and over each one."""
    cfg = model.input_config
    recordings = list(recordings)
    per = max(1, max_frames // max(len(recordings), 1))
    limits = MediaLimits.from_env() if limits is None else limits
    out = []
    for rec in recordings:
        region = _region(Path(rec), cfg.crop, limits)
        out += [cfg.pixels(f.image) for f in iter_clip_frames(rec, region, None, per, limits=limits)]
    if not out:
        raise PocovidError("no calibration frames: no recording given")
    return np.stack(out[:max_frames])


def export_model(spec: str | os.PathLike, out: str | os.PathLike, *, int8: bool = False,
                 calibration: list[str | os.PathLike] | None = None, max_frames: int = CALIBRATION_FRAMES,
                 batch_size: int = 16) -> Path:
    """`pocovid export`: the model 'default' or a model file as an ONNX file `out` (every head,
    metadata inside: models/export.py). `int8`: quantised, its activation ranges calibrated on
    frames of the `calibration` recordings (real recordings of the site: what the model will see)."""
    from pocovid.models.export import export_onnx

    model = load(spec)
    if not int8:
        return export_onnx(model, out)
    if not calibration:
        raise PocovidError("int8 export needs calibration recordings (their frames set the activation ranges)")
    px = calibration_pixels(model, calibration, max_frames)
    b = min(batch_size, len(px))  # batches of one size: a short last one is left out
    px = px[:len(px) - len(px) % b]
    names = [path_text(Path(p).name) for p in calibration]
    text = (f"{len(px)} frames of {len(names)} recording(s): " + ", ".join(names[:20])
            + (", ..." if len(names) > 20 else ""))
    batches = (model.input_tensor(px[i:i + b]).cpu().numpy() for i in range(0, len(px), b))
    return export_onnx(model, out, calibration=batches, calibration_text=text)


def _region(path: Path, crop: bool, limits: MediaLimits) -> ScanRegion:
    try:
        return clip_region(path, enabled=crop, limits=limits)
    except PocovidError:
        raise
    except Exception as e:  # a decoder failure the reader did not foresee: still one line
        raise MediaError(path, f"cannot read ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def _pixels_store(n: int, size: int) -> np.ndarray:
    if n * size * size <= PIXELS_IN_MEMORY:
        return np.empty((n, size, size), np.uint8)
    # a very long clip: an anonymous file (gone when the array is) instead of memory
    return np.memmap(tempfile.TemporaryFile(prefix="pocovid-pixels-"), np.uint8, "w+", shape=(n, size, size))


def _run(path, model, info, region, idx, engine, pool, timer, cams, keep_pixels, batch_size, inspect, n_inspect,
         progress, limits) -> RecordingOutputs:
    """Decode in `pool` ahead of the model (bounded queue); the model in this thread, once `engine`
    (a future: the runtime being built in `pool`) is there: the first frames decode meanwhile."""
    cfg = model.input_config
    n = len(idx)
    inspect_at = {idx[int(round(p))] for p in np.linspace(0, n - 1, min(n, n_inspect))} if n and inspect else set()
    pixels = _pixels_store(n, cfg.size) if keep_pixels else None
    batch = np.empty((batch_size, cfg.size, cfg.size), np.uint8)
    index, times, inspected, parts = [], [], [], []
    blank: list = []  # the first blank frames: analysed only when no frame shows anything
    n_blank = 0
    q: queue.Queue = queue.Queue(maxsize=2 * batch_size)
    stop = threading.Event()
    producer = pool.submit(_produce, path, info, region, idx, cfg, inspect, inspect_at, q, stop, timer, limits)
    try:
        t0 = time.perf_counter()
        engine = engine.result()  # the decoder fills the queue meanwhile
        timer.add("model_compile_wait_s", t0)
    except BaseException:
        stop.set()
        raise

    def run_batch(k: int) -> None:
        t0 = time.perf_counter()
        parts.append(engine.infer(model.input_tensor(batch[:k]), cams=cams).numpy())
        timer.add("model_s", t0)
        if progress:
            progress((len(index) + n_blank) / max(n, 1))

    def take(k: int, f_index, t, px) -> int:
        """Frame into slot `k` of the batch (run when full); the next free slot."""
        batch[k] = px
        if pixels is not None:
            pixels[len(index)] = px
        index.append(f_index)
        times.append(t)
        if k + 1 == batch_size:
            run_batch(batch_size)
            return 0
        return k + 1

    try:
        k = 0
        while (item := q.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            if len(index) + n_blank >= n:
                continue
            f_index, t, px, seen, empty = item
            if seen is not None:  # the guard's image cues see every inspected frame, blank ones too
                inspected.append(seen)
            if empty:
                n_blank += 1
                if len(blank) < batch_size:
                    blank.append((f_index, t, px))
                continue
            k = take(k, f_index, t, px)
        if not index:  # nothing but blank frames: those are what the recording is
            for f_index, t, px in blank:
                k = take(k, f_index, t, px)
            n_blank -= len(blank)
        if k:
            run_batch(k)
    finally:
        stop.set()
        while not producer.done():  # unblock the producer so that the pool can join it
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
    if not index:
        raise MediaError(path, "no frames could be decoded")
    got = len(index)  # fewer than planned: a truncated file, keep what decoded
    return RecordingOutputs(str(path), info, region, np.array(index, np.int64), np.array(times, np.float64),
                            FrameOutput.cat(parts), pixels[:got] if pixels is not None else None, inspected,
                            n_planned=n, runtime=str(getattr(engine, "name", "")), n_blank=n_blank,
                            precision=str(getattr(engine, "precision", "fp32")))


def _produce(path, info, region, idx, cfg, inspect, inspect_at, q, stop, timer, limits) -> None:
    def put(item) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    try:
        with open_media(path, limits) as reader:
            # a grey model's frames come grey (a video's from its decoded luma, no RGB conversion), but
            # those `inspect` looks at, which come as decoded (RGB)
            frames = reader.frames(idx, grey=cfg.grey, rgb=inspect_at)
            for f in _timed(frames, timer, "decode_s"):
                if stop.is_set():
                    return
                t0 = time.perf_counter()
                if f.image.shape[:2] != region.frame_size:
                    raise MediaError(path, f"frame {f.index} is {f.image.shape[1]}x{f.image.shape[0]} pixels, "
                                           f"the first frames {region.frame_size[1]}x{region.frame_size[0]}: "
                                           f"the frame size changes within the recording")
                px = cfg.pixels(region.crop(f.image))
                timer.add("crop_resize_s", t0)
                seen = None
                if f.index in inspect_at:
                    t0 = time.perf_counter()
                    seen = inspect(f, px, region)
                    timer.add("inspect_s", t0)
                put((f.index, f.time_s, px, seen, is_blank(px)))
        put(_END)
    except BaseException as e:  # handed to the consumer, raised there
        put(e)


def _timed(it, timer: _Timer, key: str) -> Iterator[Frame]:
    it = iter(it)
    while True:
        t0 = time.perf_counter()
        try:
            x = next(it)
        except StopIteration:
            timer.add(key, t0)
            return
        timer.add(key, t0)
        yield x
