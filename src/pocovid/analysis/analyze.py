"""One recording in, a diagnosis with its evidence out: `analyze_recording`, `analyze_files`.

    from pocovid.analysis import AnalysisConfig, analyze_recording
    result = analyze_recording("scan.mp4", "default", "out/scan", AnalysisConfig(overlay_video=True))

Path of a recording (streamed: full-resolution frames are never all in memory):
    scan region of the clip (`clip_region`) -> every sampled frame cropped to it, resized to the
    model's input, grey (as in training) -> model in batches: every member's probabilities, the
    CAM of every class and the pooled trunk features (feature density) in ONE pass -> clip
    probabilities (mean of the frames'), uncertainty (ensemble disagreement), out-of-distribution
    guard, frames-disagree check, key moments -> key frames re-decoded at full resolution with their
    heatmaps -> timeline plot, report.html, result.json (and the overlay video: a second decode).

See docs/analyze.md for result.json.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import queue
import shutil
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pocovid import __version__
from pocovid.analysis.explain import (fast_trunk, forward_with_cams, gradcam_maps, heat_scale, mass_inside,
                                     overlay_frame)
from pocovid.analysis.key_moments import disagreement, evidence_of, min_gap_s, select_key_moments
from pocovid.analysis.ood import FeatureDensity, OODParams, decide, frame_cues, small_mask
from pocovid.analysis.report import NOTICE, key_frame_image, timeline_plot, write_html, write_overlay_video
from pocovid.analysis.uncertainty import clip_uncertainty, frame_uncertainty, threshold_of
from pocovid.errors import PocovidError
from pocovid.media import MediaError, open_media, sample_indices

SCHEMA_VERSION = 1
EXPLAINERS = ("cam", "gradcam")
_CROPS_IN_MEMORY = 256 * 2**20  # larger sets of model-size crops go to a temporary file
KEY_MIN_RELATIVE = 0.5  # a key moment's probability of the class is at least this share of the clip's peak

UNCERTAINTY_TEXT = {
    "member_std": "mean over frames of the ensemble members' standard deviation of the predicted class's "
                  "probability (0 = all members agree)",
    "bald": "mutual information between the prediction and the ensemble member (BALD), nats",
    "frame_bald": "mean over frames of the mutual information between prediction and member, nats",
    "entropy": "entropy of the clip probabilities, nats",
    "margin": "1 - (top clip probability - second)",
}


@dataclass
class AnalysisConfig:
    rate_hz: float | None = None  # frames per second analysed; None: every frame
    key_frames: int = 3  # key moments (K)
    explainer: str = "cam"  # "cam" (class activation map of the pooled linear head) or "gradcam" (MONAI)
    overlay_video: bool = False  # also write overlay.mp4: the whole clip with heatmaps
    report: bool = True  # write timeline.png and report.html
    crop: bool = True  # crop to the detected scan region
    batch_size: int = 32
    max_frames: int | None = None  # at most this many frames, evenly spread (None: no limit)
    gradcam_layer: str | None = None  # Grad-CAM target module name (default: each head's last map)

    def check(self) -> None:
        if self.explainer not in EXPLAINERS:
            raise PocovidError(f"unknown explainer {self.explainer!r} (use {' or '.join(EXPLAINERS)})")
        if self.rate_hz is not None and not self.rate_hz > 0:
            raise PocovidError(f"rate must be positive (frames per second), got {self.rate_hz}")
        if self.key_frames < 0:
            raise PocovidError(f"key_frames must be >= 0, got {self.key_frames}")
        if self.batch_size < 1:
            raise PocovidError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.gradcam_layer is not None and self.explainer != "gradcam":
            raise PocovidError("gradcam_layer is for explainer='gradcam'")


def resolve_model(model) -> tuple[object, str]:
    """(FrameClassifier in eval mode, its name for the result) from a model or a spec."""
    if isinstance(model, torch.nn.Module):
        meta = getattr(model, "meta", None) or {}
        name = meta.get("source") or (f"{getattr(model, 'backbone_name', 'model')} created {meta['created']}"
                                      if meta.get("created") else "in-memory model")
        return model.eval(), str(name)
    from pocovid.inference import load

    spec = str(model)
    m = load(spec)
    m.meta = dict(m.meta or {}, source=spec)  # the name follows the loaded model (analyze_files, services)
    return m, spec


def model_info(model) -> dict:
    meta = getattr(model, "meta", None) or {}
    metrics = meta.get("metrics") or {}
    video = metrics.get("video") or {}
    return {"backbone": getattr(model, "backbone_name", None), "classes": list(model.classes),
            "n_heads": int(getattr(model, "n_heads", 1)), "input_size": int(_input_size(model)),
            "created": meta.get("created"), "pocovid_version": meta.get("pocovid_version"),
            "data_fingerprint": meta.get("data_fingerprint"),
            "cv_video_balanced_accuracy": video.get("balanced_accuracy"),
            "has_feature_density": FeatureDensity.of(model) is not None}


def _input_size(model) -> int:
    cfg = getattr(model, "training_config", None) or {}
    return int(cfg.get("size") or model.input_size)


class _Timer:
    def __init__(self):
        self.t: dict[str, float] = {}

    def add(self, key: str, dt: float) -> None:
        self.t[key] = self.t.get(key, 0.0) + dt

    def rounded(self) -> dict:
        return {k: round(v, 3) for k, v in self.t.items()}


_END = object()


def _put(q: "queue.Queue", stop: threading.Event, item) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return
        except queue.Full:
            continue


class _Background:
    """`fn(*args)` in a daemon thread; `result()` waits for it (and re-raises what it raised)."""

    def __init__(self, fn, *args):
        self._out = None
        self._err = None
        self._t = threading.Thread(target=self._run, args=(fn, args), name="pocovid-compile", daemon=True)
        self._t.start()

    def _run(self, fn, args):
        try:
            self._out = fn(*args)
        except BaseException as e:
            self._err = e

    def result(self, wait: bool = True):
        """The result; without `wait`, None while it is still running."""
        if not wait and self._t.is_alive():
            return None
        self._t.join()
        if self._err is not None:
            raise self._err
        return self._out


def _timed_iter(it, timer: _Timer, key: str):
    while True:
        t0 = time.perf_counter()
        try:
            x = next(it)
        except StopIteration:
            timer.add(key, time.perf_counter() - t0)
            return
        timer.add(key, time.perf_counter() - t0)
        yield x


def to_grey(image: np.ndarray) -> np.ndarray:
    """RGB -> grey exactly as training prepares frames (`pocovid.training.frames.to_grey`; not
    imported from there: that module pulls in MONAI, seconds of start-up for every CLI call)."""
    import cv2

    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def grey_to_input(grey: np.ndarray) -> np.ndarray:
    """(N, S, S) grey uint8 -> (N, S, S, 3), as `pocovid.training.frames.grey_to_input`."""
    return np.repeat(grey[..., None], 3, axis=3)


def _probs_dict(classes, p) -> dict:
    return {c: round(float(v), 4) for c, v in zip(classes, p)}


ARTIFACTS = ("result.json", "report.html", "timeline.png", "overlay.mp4")


def _remove_stale(out_dir: Path) -> None:
    """Outputs of an earlier analysis in the same folder (only the names analyze writes), so that a
    re-run never leaves e.g. a key frame or a video that belongs to another result."""
    for name in ARTIFACTS:
        (out_dir / name).unlink(missing_ok=True)
    for p in out_dir.glob("key_frame_*.png"):
        p.unlink(missing_ok=True)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def analyze_recording(path: str | os.PathLike, model, out_dir: str | os.PathLike,
                      config: AnalysisConfig | None = None,
                      progress: Callable[[float, str], None] | None = None) -> dict:
    """Analyse one recording (video, image or DICOM) and write its outputs to `out_dir`.

    `model`: a loaded `FrameClassifier` or a spec ("default" or a model file path). Returns the
    result.json dict (artifact paths relative to `out_dir`). Raises `PocovidError` (one line) when
    the recording cannot be read. `progress(fraction, stage)` is called as the work advances."""
    from pocovid.region import clip_region, resize_frame

    cfg = config or AnalysisConfig()
    cfg.check()
    t_start = time.perf_counter()
    timer = _Timer()
    report = progress or (lambda f, s: None)
    model, model_name = resolve_model(model)
    classes = list(model.classes)
    size = _input_size(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(out_dir)
    path = Path(path)

    # ---- scan region (one per clip) -----------------------------------------------------------
    report(0.0, "region")
    compiled = _Background(fast_trunk, model, size)  # TorchScript tracing overlaps the region search
    t0 = time.perf_counter()
    try:
        region = clip_region(path, enabled=cfg.crop)
    except PocovidError:
        raise
    except Exception as e:  # a decoder failure the reader did not foresee: still one line
        raise MediaError(path, f"cannot read ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    finally:
        timer.add("region_s", time.perf_counter() - t0)

    density = FeatureDensity.of(model)
    params = OODParams.from_model(model)
    smask = small_mask(region, size)
    tmpdir = None
    try:
        with open_media(path) as reader:
            info = reader.info
            idx = sample_indices(info.n_frames, info.fps, cfg.rate_hz, cfg.max_frames)
            n = len(idx)
            check_at = set(idx[int(round(p))] for p in np.linspace(0, n - 1, min(n, params.frames_checked))) if n else set()
            if n * size * size > _CROPS_IN_MEMORY:  # a very long clip: the crops go to a temporary file
                tmpdir = tempfile.mkdtemp(prefix=".crops-", dir=out_dir)
                crops = np.lib.format.open_memmap(Path(tmpdir) / "crops.npy", mode="w+", dtype=np.uint8,
                                                  shape=(n, size, size))
            else:
                crops = np.empty((n, size, size), np.uint8)
            logp = np.zeros((n, model.n_heads, len(classes)), np.float32)  # every member's log-probabilities
            d2 = np.zeros(n, np.float32)
            cams: np.ndarray | None = None
            times = np.zeros(n, np.float64)
            got_idx = np.zeros(n, np.int64)
            cues = []
            k = 0
            batch_start = 0

            t1 = time.perf_counter()
            trunk = compiled.result(wait=n > 4)  # a few frames run eagerly rather than wait for it
            timer.add("model_compile_wait_s", time.perf_counter() - t1)

            def run_batch(lo: int, hi: int):
                nonlocal cams
                t1 = time.perf_counter()
                x = model.normalize(grey_to_input(crops[lo:hi]))
                logits, pooled, cam = (t.cpu() for t in forward_with_cams(model, x, trunk))
                logp[lo:hi] = torch.log_softmax(logits.double(), -1).float().numpy()
                if density is not None:
                    d2[lo:hi] = density.d2(pooled)
                if cfg.explainer == "cam":
                    if cams is None:
                        cams = np.zeros((n, *cam.shape[1:]), np.float32)
                    cams[lo:hi] = cam.numpy()
                timer.add("model_s", time.perf_counter() - t1)
                report(0.05 + 0.65 * hi / max(n, 1), "classify")

            report(0.05, "classify")
            # decoding and cropping run in a second thread, ahead of the model (bounded queue)
            q: queue.Queue = queue.Queue(maxsize=2 * cfg.batch_size)
            stop = threading.Event()

            def produce():
                try:
                    for f in _timed_iter(iter(reader.frames(idx)), timer, "decode_s"):
                        if stop.is_set():
                            return
                        t1 = time.perf_counter()
                        if f.image.shape[:2] != region.frame_size:
                            raise MediaError(path, f"frame {f.index} is {f.image.shape[1]}x{f.image.shape[0]} pixels, "
                                                   f"the first frames {region.frame_size[1]}x{region.frame_size[0]}: "
                                                   f"the frame size changes within the recording")
                        g = to_grey(resize_frame(region.crop(f.image), size))
                        timer.add("crop_resize_s", time.perf_counter() - t1)
                        cue = None
                        if f.index in check_at:
                            t1 = time.perf_counter()
                            cue = frame_cues(f.image, g, region, smask, params)
                            timer.add("ood_s", time.perf_counter() - t1)
                        _put(q, stop, (f.index, f.time_s, g, cue))
                    _put(q, stop, _END)
                except BaseException as e:  # handed to the consumer, raised there
                    _put(q, stop, e)

            worker = threading.Thread(target=produce, name="pocovid-decode", daemon=True)
            worker.start()
            try:
                while True:
                    item = q.get()
                    if item is _END:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    if k >= n:
                        continue
                    index, t, g, cue = item
                    crops[k] = g
                    if cue is not None:
                        cues.append(cue)
                    times[k], got_idx[k] = t, index
                    k += 1
                    if k - batch_start == cfg.batch_size:
                        run_batch(batch_start, k)
                        batch_start = k
                if k > batch_start:
                    run_batch(batch_start, k)
            finally:
                stop.set()
                while worker.is_alive():  # unblock and finish the producer before the reader closes
                    try:
                        q.get(timeout=0.05)
                    except queue.Empty:
                        pass
                worker.join()
        if k == 0:
            raise MediaError(path, "no frames could be decoded")
        if k < n:  # a truncated file: keep what decoded
            crops, logp, d2, times, got_idx = crops[:k], logp[:k], d2[:k], times[:k], got_idx[:k]
            cams = cams[:k] if cams is not None else None
        result = _conclude(path, model, model_name, cfg, info, region, crops, np.exp(logp), logp, d2, cams, times,
                           got_idx, cues, density, params, out_dir, timer, report, size)
    finally:
        crops = None
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    result["timings"]["total_s"] = round(time.perf_counter() - t_start, 3)
    _atomic_write(out_dir / "result.json", json.dumps(result, indent=2, allow_nan=False))
    report(1.0, "done")
    return result


def _conclude(path, model, model_name, cfg, info, region, crops, members, members_logp, d2, cams, times, got_idx, cues,
              density, params, out_dir: Path, timer: _Timer, report, size) -> dict:
    classes = list(model.classes)
    n = len(times)
    frame_p = members.mean(1)
    clip_p = frame_p.mean(0)
    pred = int(np.argmax(clip_p))
    label = classes[pred]

    # ---- uncertainty, disagreement, out of distribution ----------------------------------------
    thr = threshold_of(model)
    score = clip_uncertainty(members, thr["method"], pred)
    dis = disagreement(times, frame_p, pred, classes)
    ood = decide(cues, d2 if density is not None else None, density, region, params)
    reasons = []
    if ood["out_of_distribution"]:
        reasons.append("the input does not look like lung ultrasound of the kind the model was trained on: "
                       + "; ".join(ood["reasons"]))
    if score >= thr["threshold"]:
        reasons.append(f"the model is uncertain: {thr['method']} {score:.3f} >= review threshold {thr['threshold']:.3f}")
    if dis["frames_disagree"]:
        segs = [s for s in dis["segments"] if s["sizeable"]]
        reasons.append("frames disagree: " + "; ".join(
            f"{s['label']} from {s['start_s']:.2f} s to {s['end_s']:.2f} s" for s in segs))

    # ---- key moments and their heatmaps ---------------------------------------------------------
    report(0.72, "explain")
    duration = float(info.duration_s) if info.duration_s else float(times[-1] - times[0]) if n else 0.0
    gap = min_gap_s(duration, cfg.key_frames)
    evidence = frame_p[:, pred]
    # ranked by log-odds (no ties at p = 1.00); only frames that show at least half the clip's
    # strongest evidence qualify: a frame where the class is absent is no "key moment" for it
    eligible = evidence >= KEY_MIN_RELATIVE * evidence.max() if n else None
    keys = select_key_moments(times, evidence_of(members_logp, pred), cfg.key_frames, min_gap=gap, eligible=eligible)
    t1 = time.perf_counter()
    if cfg.explainer == "cam":
        maps = cams[:, pred]
        scale = heat_scale(maps)
        key_maps = {i: maps[i] for i in keys}
    else:
        sel = np.array(sorted(keys), int)
        key_maps, scale = {}, 1.0
        if len(sel):
            g = gradcam_maps(model, model.normalize(grey_to_input(crops[sel])), pred, cfg.gradcam_layer)
            key_maps = {int(i): g[j] for j, i in enumerate(sel)}
            scale = heat_scale(g, 100.0)
        maps = None
    timer.add("explain_s", time.perf_counter() - t1)

    key_frames = []
    originals = {}
    if keys:
        t1 = time.perf_counter()
        want = {int(got_idx[i]): i for i in keys}
        with open_media(path) as r:
            for f in r.frames(sorted(want)):
                originals[want[f.index]] = f.image
        timer.add("key_frames_decode_s", time.perf_counter() - t1)
        t1 = time.perf_counter()
        for rank, i in enumerate(keys, 1):
            img = originals.get(i)
            if img is None:
                continue
            over = overlay_frame(img, key_maps[i], region, scale)
            name = f"key_frame_{rank}.png"
            probs = _probs_dict(classes, frame_p[i])
            lines = [f"key moment {rank}: t = {times[i]:.2f} s (frame {int(got_idx[i])})   evidence for {label}: "
                     f"{evidence[i]:.2f}",
                     "frame: " + ", ".join(f"{c} {p:.2f}" for c, p in probs.items()) +
                     f"   right: {'CAM' if cfg.explainer == 'cam' else 'Grad-CAM'} for {label}",
                     "INPUT OUT OF DISTRIBUTION: no diagnosis; shown only to explain the model"
                     if ood["out_of_distribution"] else "decision support, not a diagnosis"]
            key_frame_image(out_dir / name, img, over, lines)
            key_frames.append({"rank": rank, "index": int(got_idx[i]), "time_s": round(float(times[i]), 3),
                               "image": name, "probabilities": probs, "evidence": round(float(evidence[i]), 4),
                               "heat_inside_region": _nan_none(mass_inside(key_maps[i], region))})
        originals.clear()
        timer.add("key_frames_render_s", time.perf_counter() - t1)

    # ---- the result ----------------------------------------------------------------------------
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    fu = frame_uncertainty(members, pred)
    result = {
        "schema_version": SCHEMA_VERSION,
        "file": str(path),
        "model": model_name,
        "model_info": model_info(model),
        "pocovid_version": __version__,
        "created": created,
        "notice": NOTICE,
        "prediction": {"label": label, "probabilities": _probs_dict(classes, clip_p),
                       "withheld": bool(ood["out_of_distribution"]), "aggregation": "mean of frame probabilities",
                       "frames_disagree": bool(dis["frames_disagree"]), "disagreement": dis["segments"],
                       "class_share": {c: round(v, 4) for c, v in dis["class_share"].items()}},
        "uncertainty": {"score": round(float(score), 6), "method": thr["method"],
                        "threshold": thr["threshold"], "threshold_source": thr["source"],
                        "n_members": int(members.shape[1]), "description": UNCERTAINTY_TEXT[thr["method"]],
                        "components": {m: round(clip_uncertainty(members, m, pred), 6)
                                       for m in ("entropy", "bald", "member_std")}},
        "review_recommended": bool(reasons),
        "review_reasons": reasons,
        "out_of_distribution": bool(ood["out_of_distribution"]),
        "ood": {"reasons": ood["reasons"], "weak_cues": ood["weak_cues"], "cues": ood["cues"]},
        "region": region.to_dict(),
        "media": {"kind": info.kind, "format": info.format, "fps": info.fps, "n_frames": info.n_frames,
                  "width": info.width, "height": info.height, "duration_s": round(duration, 3)},
        "sampling": {"rate_hz": cfg.rate_hz, "max_frames": cfg.max_frames, "n_frames_analyzed": int(n),
                     "input_size": int(size), "crop": bool(cfg.crop), "grey": True},
        "explainer": cfg.explainer,
        "explainer_description": ("class activation map (CAM) of the pooled linear head, mean over heads"
                                  if cfg.explainer == "cam" else
                                  f"Grad-CAM (MONAI) at {cfg.gradcam_layer}" if cfg.gradcam_layer else
                                  "Grad-CAM (MONAI) at each head's last map, mean over heads"),
        "key_frame_min_gap_s": round(gap, 3),
        "frames": [{"index": int(got_idx[i]), "time_s": round(float(times[i]), 3),
                    "probabilities": _probs_dict(classes, frame_p[i]), "member_std": round(float(fu[i]), 4)}
                   for i in range(n)],
        "key_frames": key_frames,
        "timeline": None,
        "report": None,
        "overlay_video": None,
        "timings": {},
    }
    if density is not None:
        for i, fr in enumerate(result["frames"]):
            fr["density_d2"] = round(float(d2[i]), 2)

    # ---- report, timeline, overlay video -----------------------------------------------------------
    if cfg.report:
        report(0.8, "report")
        t1 = time.perf_counter()
        title = (f"{Path(path).name}: " + ("input out of distribution - no diagnosis" if result["out_of_distribution"]
                                           else f"most likely {label} ({clip_p[pred]:.2f})"))
        timeline_plot(out_dir / "timeline.png", times, frame_p, classes, pred, [times[i] for i in keys],
                      dis["segments"], members, title)
        result["timeline"] = "timeline.png"
        timer.add("timeline_s", time.perf_counter() - t1)
    if cfg.overlay_video and info.kind == "video" and n > 0:
        report(0.85, "video")
        t1 = time.perf_counter()
        if cfg.explainer == "gradcam":
            maps = np.concatenate([gradcam_maps(model, model.normalize(grey_to_input(crops[i:i + cfg.batch_size])), pred,
                                                cfg.gradcam_layer) for i in range(0, n, cfg.batch_size)])
            scale = heat_scale(maps)
        timer.add("explain_s", time.perf_counter() - t1)
        t1 = time.perf_counter()
        write_overlay_video(path, out_dir / "overlay.mp4", info, region, got_idx, frame_p, maps, scale, classes)
        result["overlay_video"] = "overlay.mp4"
        timer.add("video_s", time.perf_counter() - t1)
    if cfg.report:
        t1 = time.perf_counter()
        result["report"] = "report.html"
        result["timings"] = timer.rounded()
        write_html(out_dir / "report.html", result, out_dir)
        timer.add("report_s", time.perf_counter() - t1)
    result["timings"] = timer.rounded()
    return result


def _nan_none(v: float):
    return None if v is None or not np.isfinite(v) else round(float(v), 4)
