"""Speed and memory of `pocovid analyze`, and where the CAM heat lies on real recordings.

    python benchmarks/analyze_speed.py [--model default|FILE] [--clip FILE] [--real ../shared/data/pocus]

Target (issue 4): a 10 s, 30 fps clip at scanner resolution (800x600 phantom with scanner
overlays, H.264 mp4): every frame classified, heatmaps for the key moments, report written, in
<= 10 s wall on 2 cores with the default model; with --overlay-video <= 20 s; peak memory <= 1.5 GB.

Prints:
  model alone      frames/s of the model (trunk + every head + CAMs in one pass) on the clip's crops
  end to end       wall time and peak memory (max RSS) of the `pocovid analyze` command in a fresh
                   process (start-up, model load, everything), without and with --overlay-video;
                   frames/s end to end; the time per stage from result.json (decode, region,
                   crop/resize, model, CAM, key frames, timeline, report, video)
  --real ROOT      share of the predicted class's CAM heat mass inside the scan-region mask over the
                   real recordings (frames at 3 Hz, at most --real-frames per recording)
Without the bundled model file (and no --model), a quick phantom-trained model at 224 px with
5 heads stands in: same architecture and cost as the default model, not its accuracy.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see speed_models.py)

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_clip(path: Path) -> Path:
    from pocovid.phantom import write_phantom

    if not path.exists():
        write_phantom(path, label="covid", width=800, height=600, n_frames=300, fps=30, overlays=True,
                      feature_frames=(60, 240), seed=1)
    return path


def model_file(spec: str | None, tmp: Path) -> tuple[str, str]:
    """(model file, description)."""
    from pocovid.inference import DEFAULT_MODEL_FILE

    if spec and spec != "default":
        return spec, spec
    if DEFAULT_MODEL_FILE.is_file():
        return "default", "default (bundled)"
    from pocovid.models import save_model
    from pocovid.testing import quick_phantom_model

    p = tmp / "quick224.pt"
    if not p.exists():
        m = quick_phantom_model(size=224, n_heads=5, steps=40, seeds=(0, 1), n_frames=4)
        save_model(m, p, training_config=m.training_config, data_fingerprint="phantom", extra=m.meta["extra"])
    return str(p), "stand-in: phantom-trained efficientnet_lite0, 224 px, 5 heads (bundled model missing)"


def model_alone(model_spec: str, clip: Path) -> float:
    from pocovid.inference import load
    from pocovid.models import compiled_trunk
    from pocovid.models.classifier import INFER_CHUNK
    from pocovid.region import load_clip

    model = load(model_spec)
    cfg = model.input_config
    c = load_clip(clip, size=cfg.size)
    pixels = np.stack([cfg.pixels(f) for f in c.frames])  # the model's input pixels, as analyze makes them
    out = {}
    t = time.perf_counter()
    trunk = compiled_trunk(model, cfg.size)
    out["compile_s"] = time.perf_counter() - t
    for name, tr, chunk in (("eager, 32 frames a call", None, 32), ("compiled, 32 a call", trunk, 32),
                            ("eager, 4 a call", None, 4),
                            (f"compiled, {INFER_CHUNK} a call (analyze)", trunk, INFER_CHUNK)):
        model.infer(model.input_tensor(pixels[:32]), cams=True, trunk=tr, chunk=chunk)  # warm-up
        t = time.perf_counter()
        for i in range(0, len(pixels), 32):
            model.infer(model.input_tensor(pixels[i:i + 32]), cams=True, trunk=tr, chunk=chunk)
        out[name] = len(pixels) / (time.perf_counter() - t)
    return out


_WRAP = """
import atexit, sys, runpy
out = sys.argv[1]
def _hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(out, "w").write(line.split()[1])
atexit.register(_hwm)
sys.argv = ["pocovid"] + sys.argv[2:]
runpy.run_module("pocovid.cli", run_name="__main__")
"""


def run_cli(args: list[str], tmp: Path) -> tuple[float, float, int, str]:
    """(wall s, peak memory GB, exit code, stderr) of `pocovid analyze ...` in a fresh process. The
    peak is the process's own VmHWM (/proc): the max RSS that wait4 reports would also count the
    memory of this benchmark process it was forked from."""
    hwm = tmp / "vmhwm.txt"
    hwm.unlink(missing_ok=True)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _WRAP, str(hwm), "analyze", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    peak = int(hwm.read_text()) / 2**20 if hwm.exists() else float("nan")
    return wall, peak, p.returncode, p.stderr


def cam_inside_real(root: Path, model_spec: str, frames_per_recording: int = 5, run: Path | None = None) -> dict:
    """Share of the predicted class's positive CAM heat mass (mapped to the crop box) that lies
    inside the scan-region mask, per recording of the real data. With `run` (a `pocovid train`
    folder with fold models), each recording of the run's split is explained by the model of the
    fold that held it out: out-of-fold CAMs."""
    from pocovid.analysis.explain import mass_inside
    from pocovid.data import index_dataset
    from pocovid.errors import PocovidError
    from pocovid.inference import load
    from pocovid.region import load_clip

    model = load(model_spec)
    idx = index_dataset(root)
    fold_of, fold_models = {}, {}
    if run is not None:
        import json as _json

        for k, f in enumerate(_json.loads((Path(run) / "splits.json").read_text())["folds"]):
            for item in f["items"]:
                fold_of[item["path"]] = k
        fold_models = {k: load(Path(run) / f"fold{k}.pt") for k in set(fold_of.values())}
    shares, full = [], 0
    for it in idx.items:
        if run is not None:
            if it.path not in fold_of:
                continue
            model = fold_models[fold_of[it.path]]
        try:
            c = load_clip(idx.abspath(it), rate_hz=3.0, max_frames=frames_per_recording, size=model.input_config.size)
        except PocovidError:
            continue
        if c.region.is_full:
            full += 1
            continue
        out = model.infer(model.preprocess(c.frames), cams=True).numpy()
        pred = int(out.probs.mean(0).argmax())
        v = [mass_inside(cm, c.region) for cm in out.cams[:, pred]]
        v = [x for x in v if np.isfinite(x)]
        if v:
            shares.append(float(np.mean(v)))
    s = np.array(shares)
    return {"n_recordings": len(s), "full_frame_regions_skipped": full, "mean": float(s.mean()),
            "median": float(np.median(s)), "p10": float(np.percentile(s, 10)), "min": float(s.min())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model file (default: the bundled model, else a stand-in)")
    ap.add_argument("--clip", default=None, help="clip to analyse (default: a generated 800x600 10 s 30 fps phantom)")
    ap.add_argument("--real", default=None, help="real data root: report the CAM heat inside the scan region")
    ap.add_argument("--real-frames", type=int, default=5)
    ap.add_argument("--run", default=None, help="with --real: a training run folder; explain each recording with "
                                                "the fold model that held it out (out-of-fold CAMs)")
    ap.add_argument("--cam-only", action="store_true", help="with --real: only the CAM figure, no timing")
    ap.add_argument("--skip-video", action="store_true")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.gettempdir()) / "pocovid-analyze-bench"
    tmp.mkdir(exist_ok=True)
    if a.cam_only and a.real:
        return _print_cam(cam_inside_real(Path(a.real), model_file(a.model, tmp)[0], a.real_frames,
                                          Path(a.run) if a.run else None), a.run)
    clip = Path(a.clip) if a.clip else make_clip(tmp / "phantom_800x600_10s_30fps.mp4")
    spec, desc = model_file(a.model, tmp)
    from pocovid.analysis.result import AnalysisResult
    from pocovid.media import probe

    info = probe(clip)
    print(f"clip: {clip} ({info.width}x{info.height}, {info.n_frames} frames, {info.fps:g} fps)")
    print(f"model: {desc}; torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs")
    fps = model_alone(spec, clip)
    print(f"model alone (trunk + every head + CAMs), frames/s; compiled = TorchScript trunk, BN folded, channels-last "
          f"(compiled in {fps.pop('compile_s'):.2f} s):")
    print("  " + ", ".join(f"{k} {v:.1f}" for k, v in fps.items()))
    runs = [("analyze", [])] + ([] if a.skip_video else [("analyze --overlay-video", ["--overlay-video"])])
    for name, extra in runs:
        out = tmp / ("out_video" if extra else "out")
        wall, rss, rc, err = run_cli([str(clip), "--model", spec, "--out", str(out), "--json", *extra], tmp)
        if rc != 0:
            print(f"{name}: FAILED (exit {rc}): {err.strip()[-500:]}")
            continue
        r = AnalysisResult.model_validate_json((out / clip.stem / "result.json").read_text())
        n = r.sampling.n_frames_analyzed
        t = r.timings
        inside = t["total_s"]
        ok = wall <= (20 if extra else 10) and rss <= 1.5
        print(f"{name}: {wall:.2f} s wall (process: start-up, model load, analysis), {n / wall:.1f} frames/s "
              f"end to end; analysis itself {inside:.2f} s; peak memory {rss:.2f} GB; target "
              f"{'<= 20 s' if extra else '<= 10 s'}, <= 1.5 GB: {'OK' if ok else 'MISSED'}")
        startup = wall - inside
        parts = {"start-up + model load": startup} | {k[:-2]: v for k, v in t.items() if k != "total_s"}
        print("  where the time goes: " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))
        print("  (decode, crop_resize and ood run in a second thread, overlapping model; the trunk compiles "
              "while the region is searched: model_compile_wait is what is left of it)")
        print(f"  prediction {r.prediction.label} {r.prediction.probabilities}, key frames at "
              f"{[k.time_s for k in r.key_frames]} s, heat inside region "
              f"{[k.heat_inside_region for k in r.key_frames]}")
    if a.real:
        _print_cam(cam_inside_real(Path(a.real), spec, a.real_frames, Path(a.run) if a.run else None), a.run)
    return 0


def _print_cam(s: dict, run) -> int:
    kind = "out-of-fold (fold models of " + str(run) + ")" if run else "one model"
    print(f"CAM heat mass inside the scan-region mask, {kind}, {s['n_recordings']} real recordings "
          f"({s['full_frame_regions_skipped']} with a full-frame region skipped): mean {s['mean']:.1%}, "
          f"median {s['median']:.1%}, 10th percentile {s['p10']:.1%}, min {s['min']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
