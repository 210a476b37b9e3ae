"""One recording in, a diagnosis with its evidence out: `analyze_recording`.

    from pocovid.analysis import AnalysisConfig, analyze_recording
    result = analyze_recording("scan.mp4", "default", "out/scan", AnalysisConfig(overlay_video=True))
    result.prediction.label, result.to_json()

The model runs once over the recording (`pocovid.inference.stream_predict`: every member's
probabilities, the CAM of every class and the pooled features in one streamed pass), then:
clip probabilities (mean of the frames'), uncertainty (ensemble), out-of-distribution guard,
frames-disagree check, key moments of every class the frames support -> key frames re-decoded at
full resolution with their heatmaps (the scan region only, unless `full_screen`) -> timeline plot,
report.html, result.json (and the overlay video: a second decode).
The result is an `AnalysisResult` (analysis/result.py; docs/analyze.md).
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocovid import __version__
from pocovid.analysis.display import clinical_name, finding_name, percent, uncertainty_sentence
from pocovid.analysis.explain import gradcam_maps, heat_scale, mass_inside, overlay_frame, scan_view
from pocovid.analysis.key_moments import class_key_moments, disagreement, min_gap_s
from pocovid.analysis.ood import OUTSIDE_WORDS, OODParams, decide, frame_cues, small_mask
from pocovid.analysis.report import NOTICE, key_frame_image, timeline_plot, write_html, write_overlay_video
from pocovid.analysis.result import (FINDING_MAP_MIN, AnalysisResult, FindingMap, FrameResult, KeyFrame,
                                     MediaSummary, ModelSummary, OutOfDistribution, Prediction, Sampling, Segment,
                                     Severity, Uncertainty)
from pocovid.analysis.uncertainty import clip_uncertainty, frame_uncertainty, threshold_of
from pocovid.errors import PocovidError
from pocovid.files import path_text, write_text
from pocovid.inference import RecordingOutputs, load, load_for_runtime, stream_predict
from pocovid.media import open_media
from pocovid.models import FeatureDensity, model_summary
from pocovid.models.adaptation import adapt_clip_probs, adaptation_of
from pocovid.models.outputs import severity_level
from pocovid.models.runtime import CHOICES as RUNTIME_CHOICES
from pocovid.models.runtime import REDUCED as RUNTIME_REDUCED
from pocovid.models.runtime import get_runtime, graph_runtime

EXPLAINERS = ("cam", "gradcam")
#: Containers a browser's <video> plays; for the others the overlay video comes with playback.mp4.
BROWSER_PLAYABLE = ("mp4", "m4v", "mov", "webm")

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
    # torch, onnx, openvino, or auto: the fastest installed here (models/runtime.py); openvino-bf16 by name only
    runtime: str = "auto"
    full_screen: bool = False  # key frames and videos show the whole screen (default: the scan region only)
    show_path: bool = False  # the result and report name the file by its whole path (default: its name)
    # an exported ONNX graph of the model (`pocovid export`, fp32 or int8) that the graph runtime runs instead of
    # its own export: runtime onnx or openvino (auto: onnx, else openvino); checked to be this model's
    graph: str | None = None

    def check(self) -> None:
        if self.explainer not in EXPLAINERS:
            raise PocovidError(f"unknown explainer {self.explainer!r} (use {' or '.join(EXPLAINERS)})")
        if self.rate_hz is not None and not self.rate_hz > 0:
            raise PocovidError(f"rate must be positive (frames per second), got {self.rate_hz}")
        if self.key_frames < 0:
            raise PocovidError(f"key_frames must be >= 0, got {self.key_frames}")
        if self.batch_size < 1:
            raise PocovidError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_frames is not None and self.max_frames < 1:
            raise PocovidError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.runtime not in RUNTIME_CHOICES:
            raise PocovidError(f"unknown runtime {self.runtime!r} (use {', '.join(RUNTIME_CHOICES)})")
        if self.gradcam_layer is not None and self.explainer != "gradcam":
            raise PocovidError("gradcam_layer is for explainer='gradcam'")
        if self.graph is not None:
            if not str(self.graph).strip():
                raise PocovidError("graph: give the path of an exported ONNX file")
            if not Path(self.graph).is_file():
                why = "not a graph file (a folder or a device)" if os.path.exists(self.graph) else "no such graph file"
                raise PocovidError(f"{path_text(self.graph)}: {why}")
            if self.runtime == "torch" or self.runtime in RUNTIME_REDUCED:
                raise PocovidError(f"{path_text(self.graph)}: an exported graph runs at its own precision on "
                                   f"runtime onnx or openvino (or auto), not {self.runtime}")


def resolve_model(model, config: AnalysisConfig | None = None) -> tuple[object, str]:
    """(the model in eval mode, its name for the result) from a model or a spec ("default" or a
    model file). With a `config` whose frame pass needs no PyTorch (a graph runtime, CAM), a spec
    may give the model as its cached graph (`inference.load_for_runtime`)."""
    if not isinstance(model, (str, os.PathLike)):  # a FrameClassifier, or a GraphModel
        meta = getattr(model, "meta", None) or {}
        name = meta.get("source") or (f"{getattr(model, 'backbone_name', 'model')} created {meta['created']}"
                                      if meta.get("created") else "in-memory model")
        return model.eval(), str(name)
    if config is not None and torch_free(config):
        return load_for_runtime(str(model), config.runtime), str(model)
    return load(str(model)), str(model)


def torch_free(config: AnalysisConfig) -> bool:
    """Whether an analysis with `config` can run on a model's cached graph alone: on a graph
    runtime, with CAM heatmaps (Grad-CAM differentiates the PyTorch model). A graph file given
    (`--graph`) is checked against the cached graph's fingerprint, which is the model's."""
    return config.runtime != "torch" and config.explainer == "cam"


def _probs_dict(classes, p) -> dict:
    return {c: round(float(v), 4) for c, v in zip(classes, p)}


ARTIFACTS = ("result.json", "report.html", "timeline.png", "overlay.mp4", "playback.mp4")


def _remove_stale(out_dir: Path) -> None:
    """Outputs of an earlier analysis in the same folder (only the names analyze writes), so that a
    re-run never leaves e.g. a key frame or a video that belongs to another result."""
    for name in ARTIFACTS:
        (out_dir / name).unlink(missing_ok=True)
    for p in out_dir.glob("key_frame_*.png"):
        p.unlink(missing_ok=True)


def _ood_inspector(params: OODParams, size: int):
    """The image cues of the out-of-distribution guard, measured in the decode thread."""
    masks: dict = {}

    def inspect(frame, pixels, region):
        if "m" not in masks:
            masks["m"] = small_mask(region, size)
        return frame_cues(frame.image, pixels, region, masks["m"], params)
    return inspect


def analyze_recording(path: str | os.PathLike, model, out_dir: str | os.PathLike,
                      config: AnalysisConfig | None = None,
                      progress: Callable[[float, str], None] | None = None) -> AnalysisResult:
    """Analyse one recording (video, image or DICOM) and write its outputs to `out_dir`.

    `model`: a loaded `FrameClassifier` or a spec ("default" or a model file path). Returns the
    `AnalysisResult` (artifact names relative to `out_dir`), also written as result.json. Raises
    `PocovidError` (one line) when the recording cannot be read. `progress(fraction, stage)` is
    called as the work advances."""
    cfg = config or AnalysisConfig()
    cfg.check()
    t_start = time.perf_counter()
    report = progress or (lambda f, s: None)
    model, model_name = resolve_model(model, cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(out_dir)
    path = Path(path)
    params = OODParams.from_model(model)
    report(0.0, "classify")

    def classify_progress(f: float) -> None:
        if cfg.report:  # the first frames are through: the region search is done, the GIL is mostly free
            _import_plotting_meanwhile()
        report(0.05 + 0.65 * f, "classify")

    # a graph file given: checked against the model and built once per model and file (models/runtime.py)
    engine = graph_runtime(model, cfg.runtime, cfg.graph) if cfg.graph is not None else cfg.runtime
    rec = stream_predict(path, model, rate_hz=cfg.rate_hz, max_frames=cfg.max_frames, crop=cfg.crop,
                         cams=cfg.explainer == "cam", keep_pixels=cfg.explainer == "gradcam",
                         batch_size=cfg.batch_size, runtime=engine,
                         inspect=_ood_inspector(params, model.input_config.size),
                         n_inspect=params.frames_checked, progress=classify_progress)
    timings = dict(rec.timings)
    result = _conclude(rec, model, model_name, cfg, params, getattr(engine, "graph", None))
    report(0.72, "explain")
    moments = _key_frame_maps(rec, model, cfg, result, timings)
    originals = _write_key_frames(rec, result, moments, cfg, out_dir, timings)
    _write_finding_maps(rec, model, engine, result, originals, cfg, out_dir, timings)
    _write_artifacts(rec, model, cfg, result, out_dir, timings, report)
    timings["total_s"] = time.perf_counter() - t_start
    result.timings = {k: round(v, 3) for k, v in timings.items()}
    write_text(out_dir / "result.json", result.model_dump_json(indent=2))
    report(1.0, "done")
    return result


def _conclude(rec: RecordingOutputs, model, model_name: str, cfg: AnalysisConfig, params: OODParams,
              graph=None) -> AnalysisResult:
    """The verdict: clip probabilities, uncertainty, out-of-distribution guard, disagreement.
    `graph`: the `GraphFile` the frame pass ran (`cfg.graph`), None for the runtime's own (fp32)."""
    classes = list(model.classes)
    members, times, n = rec.member_probs, rec.time_s, len(rec)
    frame_p = members.mean(1)
    clip_p = adapt_clip_probs(model, frame_p.mean(0))  # a site adaptation (if any) acts here only
    pred = int(np.argmax(clip_p))
    density = FeatureDensity.of(model)
    d2 = density.d2(rec.outputs.pooled) if density is not None else None
    thr = threshold_of(model)
    score = clip_uncertainty(members, thr["method"], pred)
    dis = disagreement(times, frame_p, pred, classes)
    ood = decide(rec.inspected, d2, density, rec.region, params)
    reasons = []
    if ood["out_of_distribution"]:
        reasons.append(f"{OUTSIDE_WORDS}: " + "; ".join(ood["reasons"]))
    if score >= thr["threshold"]:
        reasons.append("the model is uncertain: its uncertainty is at or above the level at which review is "
                       "recommended")
    if dis["frames_disagree"]:
        segs = [s for s in dis["segments"] if s["sizeable"]]
        reasons.append("frames disagree: " + "; ".join(
            f"{clinical_name(s['label'])} from {s['start_s']:.2f} s to {s['end_s']:.2f} s" for s in segs))
    if cut := _cut_short(rec):
        reasons.append(cut)
    info = rec.info
    duration = float(info.duration_s) if info.duration_s else float(times[-1] - times[0]) if n else 0.0
    fu = frame_uncertainty(members, pred)
    input_cfg = model.input_config
    return AnalysisResult(
        file=path_text(rec.path if cfg.show_path else Path(rec.path).name), model=model_name,
        model_info=ModelSummary(**model_summary(model), runtime=rec.runtime or None,
                                **frame_pass_of(graph, rec.precision)),
        pocovid_version=__version__, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        notice=NOTICE,
        prediction=Prediction(label=classes[pred], probabilities=_probs_dict(classes, clip_p),
                              withheld=bool(ood["out_of_distribution"]), aggregation="mean of frame probabilities"
                              + (", site-adapted (pocovid adapt)" if adaptation_of(model) else ""),
                              frames_disagree=bool(dis["frames_disagree"]),
                              disagreement=[Segment(**s) for s in dis["segments"]],
                              class_share={c: round(v, 4) for c, v in dis["class_share"].items()}),
        **clip_targets(rec.outputs, model),
        uncertainty=Uncertainty(score=round(float(score), 6), method=thr["method"], threshold=thr["threshold"],
                                threshold_source=thr["source"], n_members=int(members.shape[1]),
                                description=UNCERTAINTY_TEXT[thr["method"]],
                                summary=uncertainty_sentence(float(score), thr["threshold"]),
                                components={m: round(clip_uncertainty(members, m, pred), 6)
                                            for m in ("entropy", "bald", "member_std")}),
        review_recommended=bool(reasons), review_reasons=reasons,
        out_of_distribution=bool(ood["out_of_distribution"]),
        ood=OutOfDistribution(reasons=ood["reasons"], weak_cues=ood["weak_cues"], cues=ood["cues"]),
        region=rec.region.to_dict(),
        media=MediaSummary(kind=info.kind, format=info.format, fps=info.fps, n_frames=info.n_frames,
                           width=info.width, height=info.height, duration_s=round(duration, 3)),
        sampling=Sampling(rate_hz=cfg.rate_hz, max_frames=cfg.max_frames, n_frames_analyzed=int(n),
                          n_frames_blank=int(rec.n_blank),
                          input_size=int(input_cfg.size), crop=bool(cfg.crop), grey=input_cfg.grey),
        explainer=cfg.explainer,
        explainer_description=("class activation map (CAM) of the pooled linear head, mean over heads"
                               if cfg.explainer == "cam" else
                               f"Grad-CAM (MONAI) at {cfg.gradcam_layer}" if cfg.gradcam_layer else
                               "Grad-CAM (MONAI) at each head's last map, mean over heads"),
        key_frame_min_gap_s=round(min_gap_s(duration, cfg.key_frames), 3),
        frames=[FrameResult(index=int(rec.index[i]), time_s=round(float(times[i]), 3),
                            probabilities=_probs_dict(classes, frame_p[i]), member_std=round(float(fu[i]), 4),
                            density_d2=None if d2 is None else round(float(d2[i]), 2))
                for i in range(n)],
        key_frames=[], full_screen=bool(cfg.full_screen))


def frame_pass_of(graph, precision: str = "fp32") -> dict:
    """`model_info`'s precision, graph and graph_sha256 of a frame pass on `graph` (a `GraphFile`,
    `analyze --graph`: its own precision), or on the runtime's own graph or torch (None) in
    `precision` (fp32, or bf16 on openvino-bf16: `runtime.runtime_precision`)."""
    if graph is None:
        return {"precision": precision, "graph": None, "graph_sha256": None}
    return {"precision": graph.precision, "graph": graph.name, "graph_sha256": graph.sha256}


def clip_targets(outputs, model) -> dict:
    """{"findings": {name: probability}, "severity": Severity} of a clip: each head's probabilities,
    mean over frames and members; None for a head the model does not have (or no frame). The
    severity level is the ordinal head's median level (`models.outputs.severity_level`)."""
    out: dict = {"findings": None, "severity": None}
    f = outputs.findings
    if f is not None and np.size(f):
        names = list(getattr(model, "findings", None) or [])
        out["findings"] = {n: round(float(v), 4) for n, v in zip(names, np.asarray(f, float).mean((0, 1)))}
    s = outputs.severity
    if s is not None and np.size(s):
        p = np.asarray(s, float).mean((0, 1))
        p = p / p.sum()
        out["severity"] = Severity(expected=round(float(p @ np.arange(len(p))), 3),
                                   probabilities=[round(float(v), 4) for v in p], level=severity_level(p))
    return out


def _cut_short(rec: RecordingOutputs) -> str | None:
    """A review reason when the file holds fewer frames than it declares or than decoded: only
    what is there was analysed (a truncated upload or copy)."""
    declared = rec.info.n_frames_declared
    if declared and declared > rec.info.n_frames:
        return (f"the recording is cut short: its header declares {declared} frames, the file holds "
                f"{rec.info.n_frames}; only those were analysed")
    if len(rec) + rec.n_blank < rec.n_planned:
        return (f"the recording is cut short: {len(rec) + rec.n_blank} of {rec.n_planned} sampled frames could "
                f"be decoded")
    return None


def _key_frame_maps(rec: RecordingOutputs, model, cfg: AnalysisConfig, result: AnalysisResult,
                    timings: dict) -> list[tuple[int, int, np.ndarray, float]]:
    """Key moments of every class the frames support (`class_key_moments`) with the heatmap of
    their own class: [(frame, class, map, the class's heat scale)]."""
    t0 = time.perf_counter()
    pred = list(model.classes).index(result.prediction.label)
    moments = class_key_moments(rec.time_s, rec.probs, rec.outputs.log_probs, pred, cfg.key_frames,
                                min_gap=result.key_frame_min_gap_s)
    maps: dict[int, np.ndarray] = {}
    scales: dict[int, float] = {}
    for c in dict.fromkeys(c for _, c in moments):
        sel = np.array(sorted(i for i, k in moments if k == c), int)
        if cfg.explainer == "cam":
            scales[c] = heat_scale(rec.outputs.cams[:, c])
            maps |= {int(i): rec.outputs.cams[i, c] for i in sel}
        else:
            g = gradcam_maps(model, model.input_tensor(rec.pixels[sel]), c, cfg.gradcam_layer)
            scales[c] = heat_scale(g, 100.0)
            maps |= {int(i): g[j] for j, i in enumerate(sel)}
    timings["explain_s"] = timings.get("explain_s", 0.0) + time.perf_counter() - t0
    return [(i, c, maps[i], scales[c]) for i, c in moments]


def _write_key_frames(rec: RecordingOutputs, result: AnalysisResult, moments: list, cfg: AnalysisConfig,
                      out_dir: Path, timings: dict) -> dict[int, np.ndarray]:
    """Each key moment's full-resolution frame beside the same frame with the heatmap of its class
    (PNG): the scan region only, unless `cfg.full_screen`. Returns the decoded frames {analysed
    frame: image}."""
    if not moments:
        return {}
    t0 = time.perf_counter()
    want = {int(rec.index[i]): i for i, *_ in moments}
    originals = {}
    with open_media(rec.path) as r:  # found by their times: a video seeks rather than decode all before them
        for f in r.frames_at({k: float(rec.time_s[i]) for k, i in want.items()}):
            originals[want[f.index]] = f.image
    timings["key_frames_decode_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    classes = list(result.prediction.probabilities)
    method = "CAM" if cfg.explainer == "cam" else "Grad-CAM"
    for rank, (i, c, cam, scale) in enumerate(moments, 1):
        img = originals.get(i)
        if img is None:
            continue
        label, probs = classes[c], result.frames[i].probabilities
        name = f"key_frame_{rank}.png"
        when = f"key moment {rank}: {rec.time_s[i]:.2f} s (frame {int(rec.index[i])})"
        if result.out_of_distribution:  # no class with a percentage: that would read as a verdict
            lines = [f"{when}: where the model looked ({method})",
                     "OUTSIDE WHAT THE MODEL WAS TRAINED ON: no diagnosis; this is no evidence for any class"]
        else:
            lines = [f"{when}, {clinical_name(label)} {percent(probs[label])}",
                     "this frame: " + ", ".join(f"{clinical_name(k)} {percent(v)}" for k, v in probs.items()),
                     f"right: where the model sees {clinical_name(label)} ({method})",
                     "decision support, not a diagnosis"]
        key_frame_image(out_dir / name, scan_view(img, rec.region, cfg.full_screen),
                        overlay_frame(img, cam, rec.region, scale, full_screen=cfg.full_screen), lines)
        result.key_frames.append(KeyFrame(rank=rank, index=int(rec.index[i]), time_s=round(float(rec.time_s[i]), 3),
                                          label=label, image=name, probabilities=probs,
                                          evidence=round(float(rec.probs[i, c]), 4),
                                          heat_inside_region=_nan_none(mass_inside(cam, rec.region))))
    timings["key_frames_render_s"] = time.perf_counter() - t0
    return originals


def _write_finding_maps(rec: RecordingOutputs, model, engine, result: AnalysisResult, originals: dict,
                        cfg: AnalysisConfig, out_dir: Path, timings: dict) -> None:
    """For each finding the clip shows (probability >= FINDING_MAP_MIN), the class activation map of
    the finding's head (`FrameOutput.finding_cams`) on the key frame where the finding is most
    probable, beside the frame (PNG `key_frame_<rank>_<finding>.png`). The frames are those the key
    frames decoded; the model runs again on them alone (the frame pass keeps no finding maps: a
    few frames need them). Heat is scaled to the map's own peak: one frame, no clip-wide scale."""
    names = list(getattr(model, "findings", None) or [])
    if not names or not result.findings or result.out_of_distribution or not originals:
        return
    shown = sorted((n for n, p in result.findings.items() if p >= FINDING_MAP_MIN and n in names),
                   key=lambda n: -result.findings[n])
    if not shown:
        return
    t0 = time.perf_counter()
    keys = sorted(originals)  # analysed-frame positions of the key frames
    rank = {int(np.flatnonzero(rec.index == k.index)[0]): k.rank for k in result.key_frames}
    probs = np.asarray(rec.outputs.findings, np.float32).mean(1)  # (N, F): the members' mean
    at = {n: keys[int(np.argmax(probs[keys, names.index(n)]))] for n in shown}  # each finding's frame
    frames = sorted(set(at.values()))  # the model runs on these alone
    pixels = np.stack([model.input_config.pixels(rec.region.crop(originals[i])) for i in frames])
    runtime = get_runtime(model, engine, build=False)  # the frame pass's (ready), or the eager model
    maps = runtime.infer(model.input_tensor(pixels), cams=False, finding_cams=True).numpy().finding_cams
    for name in shown:
        j, i = names.index(name), at[name]
        cam, img = maps[frames.index(i), j], originals[i]
        file = f"key_frame_{rank[i]}_{name}.png"
        when = f"{rec.time_s[i]:.2f} s (frame {int(rec.index[i])})"
        lines = [f"{finding_name(name)}: {percent(result.findings[name])} over the clip, {percent(probs[i, j])} "
                 f"at {when}",
                 f"right: where the model sees {finding_name(name)} (CAM of its findings head, scaled to its peak)",
                 "decision support, not a diagnosis"]
        key_frame_image(out_dir / file, scan_view(img, rec.region, cfg.full_screen),
                        overlay_frame(img, cam, rec.region, heat_scale(cam[None], 100.0),
                                      full_screen=cfg.full_screen), lines)
        result.finding_maps.append(FindingMap(
            finding=name, probability=result.findings[name], index=int(rec.index[i]),
            time_s=round(float(rec.time_s[i]), 3), frame_probability=round(float(probs[i, j]), 4), image=file,
            heat_inside_region=_nan_none(mass_inside(cam, rec.region))))
    timings["finding_maps_s"] = time.perf_counter() - t0


def _overlay_classes(rec: RecordingOutputs, result: AnalysisResult, classes: list[str]) -> np.ndarray:
    """The class whose heatmap each analysed frame shows in the overlay video: the clip's, or
    the class of a sizeable run of frames that favour another one."""
    out = np.full(len(rec), classes.index(result.prediction.label), int)
    for s in result.prediction.disagreement:
        if s.sizeable:
            out[(rec.time_s >= s.start_s - 1e-6) & (rec.time_s <= s.end_s + 1e-6)] = classes.index(s.label)
    return out


def _overlay_maps(rec: RecordingOutputs, model, cfg: AnalysisConfig, frame_cls: np.ndarray):
    """(maps (N, h, w), per-frame heat scale (N,)): each frame's map of its `frame_cls` class,
    each class scaled over the clip."""
    maps, scales = None, np.ones(len(rec), np.float32)
    for c in np.unique(frame_cls):
        sel = np.flatnonzero(frame_cls == c)
        if cfg.explainer == "gradcam":
            m = np.concatenate([gradcam_maps(model, model.input_tensor(rec.pixels[sel[i:i + cfg.batch_size]]), int(c),
                                             cfg.gradcam_layer) for i in range(0, len(sel), cfg.batch_size)])
            scale = heat_scale(m)
        else:
            m, scale = rec.outputs.cams[sel, c], heat_scale(rec.outputs.cams[:, c])
        if maps is None:
            maps = np.zeros((len(rec), *m.shape[1:]), np.float32)
        maps[sel], scales[sel] = m, scale
    return maps, scales


_PLOTTING_IMPORT: list[threading.Thread] = []  # started once per process


def _import_plotting_meanwhile() -> None:
    """Import matplotlib (~0.3 s) in a thread during the frame pass, whose main thread mostly waits
    on the model (the GIL is free), not after it when the timeline needs it. (Started beside the
    region search it slowed that by as much, both being Python-bound.) Not a daemon: the interpreter
    joins it before it finalises; a daemon thread still importing matplotlib's C++ extensions at exit
    (a batch whose last file fails at once) aborted the process (SIGABRT, "terminate called ...")."""
    if _PLOTTING_IMPORT or "matplotlib.figure" in sys.modules:
        return

    def imp():
        try:
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.figure  # noqa: F401
        except Exception:  # noqa: BLE001 - the timeline's own import says what is wrong
            pass

    _PLOTTING_IMPORT.append(threading.Thread(target=imp, name="pocovid-import-plotting", daemon=False))
    _PLOTTING_IMPORT[0].start()


def _write_artifacts(rec: RecordingOutputs, model, cfg: AnalysisConfig, result: AnalysisResult, out_dir: Path,
                     timings: dict, report) -> None:
    """Timeline plot (not for a single frame), overlay video (+ a playable copy of the recording)
    and the HTML report, as the config asks."""
    classes = list(model.classes)
    pred = classes.index(result.prediction.label)
    frame_p = rec.probs
    if cfg.report and len(rec) > 1:  # one frame has no timeline
        report(0.8, "report")
        t0 = time.perf_counter()
        p = result.prediction
        title = f"{path_text(Path(rec.path).name)}: " + ("outside what the model was trained on - no diagnosis"
                                                         if result.out_of_distribution else
                                                         f"most likely {clinical_name(p.label)} "
                                                         f"({percent(p.probabilities[p.label])})")
        timeline_plot(out_dir / "timeline.png", rec.time_s, frame_p, classes, pred,
                      [k.time_s for k in result.key_frames], [s.model_dump() for s in result.prediction.disagreement],
                      rec.member_probs, title, key_labels=[k.label for k in result.key_frames])
        result.timeline = "timeline.png"
        timings["timeline_s"] = time.perf_counter() - t0
    if cfg.overlay_video and rec.info.kind == "video" and len(rec):
        report(0.85, "video")
        t0 = time.perf_counter()
        frame_cls = _overlay_classes(rec, result, classes)
        maps, scales = _overlay_maps(rec, model, cfg, frame_cls)
        timings["explain_s"] = timings.get("explain_s", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        playback = None if rec.info.format in BROWSER_PLAYABLE else out_dir / "playback.mp4"
        write_overlay_video(rec.path, out_dir / "overlay.mp4", rec.info, rec.region, rec.index, frame_p, maps, scales,
                            classes, frame_cls, full_screen=cfg.full_screen, playback_path=playback)
        result.overlay_video = "overlay.mp4"
        result.playback_video = playback.name if playback is not None else None
        timings["video_s"] = time.perf_counter() - t0
    if cfg.report:
        t0 = time.perf_counter()
        result.report = "report.html"
        result.timings = {k: round(v, 3) for k, v in timings.items()}
        write_html(out_dir / "report.html", result, out_dir)
        timings["report_s"] = time.perf_counter() - t0


def _nan_none(v: float):
    return None if v is None or not np.isfinite(v) else round(float(v), 4)
