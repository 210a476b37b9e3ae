"""Frames per second of the frame pass on each runtime, and what int8 costs in accuracy.

    python benchmarks/runtimes.py [--model default|FILE] [--real ../shared/data/pocus] [--threads 2]
                                  [--batches 1,4,16,32] [--frames 64] [--no-accuracy] [--out runs/runtimes]

Speed: the model (trunk + every head + CAMs, what `stream_predict` asks for) on the same prepared
frames, `--frames` of them per measurement, in calls of 1, 4, 16, 32 frames (one call = one
`infer` of that many frames; torch runs them in one piece, not in analyze's chunks of 4), best of
two passes after a warm-up call, on `--threads` threads:
  torch eager       FrameClassifier.infer on the eager trunk
  torch compiled    the same on the TorchScript-frozen trunk (models/compiled.py: what analyze uses)
  onnx fp32         onnxruntime on the exported graph (models/export.py)
  onnx int8         onnxruntime on the int8 graph, calibrated on real frames (see below)
  openvino fp32     OpenVINO on the exported graph (when installed)
The load average is printed before and after: other processes share the cores, so compare rows
measured together, not with another day's.

Accuracy of int8 (`--real`, unless --no-accuracy): calibration frames from the convex images and
every 5th convex video of ../shared/data/pocus (256 frames); then every convex video through the
frame pass on torch (fp32) and on the int8 graph, frames sampled as the model's training sampled
them (3 Hz, at most 30): how many clip decisions change (argmax of the mean frame probabilities),
among them those not used in calibration, and the largest differences of clip / frame
probabilities, findings and expected severity. Without --real the frames are phantom clips.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see speed_models.py)

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mpeg", ".mpg", ".gif"}


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def real_sets(root: Path) -> tuple[list[Path], list[Path]]:
    """(calibration recordings, every convex video) of the POCUS folder."""
    videos = sorted(p for p in (root / "pocus_videos" / "convex").iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    images = sorted(p for p in (root / "pocus_images" / "convex").iterdir() if not p.name.startswith("."))
    return images + videos[::5], videos


def phantom_sets(tmp: Path) -> tuple[list[Path], list[Path]]:
    from pocovid.phantom import write_phantom

    out = []
    for i, label in enumerate(("covid", "pneumonia", "regular") * 3):
        out.append(tmp / f"{label}_{i}.mp4")
        if not out[-1].exists():
            write_phantom(out[-1], label=label, n_frames=40, fps=10.0, width=480, height=400, overlays=True, seed=i)
    return out[::3], out


def engines(model, int8_path: Path | None) -> dict:
    """name -> infer(x: normalised (B, 3, S, S) tensor) on that runtime, calls of B frames."""
    from pocovid.models import compiled_trunk
    from pocovid.models.runtime import OnnxRuntime, OpenVinoRuntime, available_runtimes

    trunk = compiled_trunk(model, model.input_config.size)
    out = {"torch eager": lambda x: model.infer(x, cams=True, chunk=0),
           "torch compiled": lambda x: model.infer(x, cams=True, trunk=trunk, chunk=0)}
    have = available_runtimes()
    if "onnx" in have:
        out["onnx fp32"] = OnnxRuntime(model).infer
        if int8_path is not None:
            out["onnx int8"] = OnnxRuntime(model, int8_path).infer
    if "openvino" in have:
        out["openvino fp32"] = OpenVinoRuntime(model).infer
    return out


def speed(infer, x: torch.Tensor, batch: int) -> float:
    infer(x[:batch])  # warm-up (allocations, first-call paths)
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        for i in range(0, len(x) - batch + 1, batch):
            infer(x[i:i + batch])
        best = min(best, time.perf_counter() - t)
    return (len(x) // batch * batch) / best


def int8_accuracy(model, int8_path: Path, videos: list[Path], calibration: set[Path]) -> None:
    from pocovid.inference import stream_predict
    from pocovid.models.runtime import OnnxRuntime

    q = OnnxRuntime(model, int8_path)
    cfg = model.input_config
    classes = list(model.classes)
    rows = []
    for v in videos:
        a = stream_predict(v, model, rate_hz=cfg.rate_hz, max_frames=cfg.max_frames, runtime="torch")
        b = stream_predict(v, model, rate_hz=cfg.rate_hz, max_frames=cfg.max_frames, runtime=q)
        pa, pb = a.probs.mean(0), b.probs.mean(0)
        sev = lambda r: None if r.outputs.severity is None else float(  # noqa: E731
            r.outputs.severity.mean((0, 1)) @ np.arange(r.outputs.severity.shape[-1]))
        rows.append(dict(name=v.name, calib=v in calibration, a=pa, b=pb, frame=np.abs(a.probs - b.probs).max(),
                         agree=np.mean(a.probs.argmax(1) == b.probs.argmax(1)),
                         find=None if a.outputs.findings is None else
                         np.abs(a.outputs.findings.mean((0, 1)) - b.outputs.findings.mean((0, 1))).max(),
                         sev=None if sev(a) is None else abs(sev(a) - sev(b))))
    changed = [r for r in rows if r["a"].argmax() != r["b"].argmax()]
    held = [r for r in rows if not r["calib"]]
    d = np.array([np.abs(r["a"] - r["b"]).max() for r in rows])
    print(f"int8 vs fp32 (torch) on {len(rows)} convex videos, frames at {cfg.rate_hz} Hz, at most {cfg.max_frames}:")
    print(f"  clip decisions changed: {len(changed)} of {len(rows)} "
          f"({sum(not r['calib'] for r in changed)} of {len(held)} not used in calibration)")
    for r in changed:
        print(f"    {r['name']}: {classes[r['a'].argmax()]} {r['a'].max():.3f} -> {classes[r['b'].argmax()]} "
              f"{r['b'].max():.3f}{' (calibration)' if r['calib'] else ''}")
    print(f"  clip probabilities: max |diff| {d.max():.4f}, mean {d.mean():.4f}, median {np.median(d):.4f}")
    print(f"  frame probabilities: max |diff| {max(r['frame'] for r in rows):.4f}; frame decisions agree "
          f"{np.mean([r['agree'] for r in rows]):.3f} (mean over videos)")
    if rows[0]["find"] is not None:
        print(f"  clip findings: max |diff| {max(r['find'] for r in rows):.4f}")
    if rows[0]["sev"] is not None:
        print(f"  clip expected severity (0-3): max |diff| {max(r['sev'] for r in rows):.3f}")
    prefix = {"cov": "covid", "pneu": "pneumonia", "reg": "regular"}
    truth = [prefix.get(r["name"].split("_")[0].split("-")[0].lower()) for r in rows]
    for key, what in (("a", "fp32"), ("b", "int8")):
        hits = [t == classes[r[key].argmax()] for t, r in zip(truth, rows) if t in classes]
        print(f"  clip accuracy vs file-name labels ({what}; videos the bundled model trained on): "
              f"{np.mean(hits):.3f} of {len(hits)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--real", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "pocus"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,4,16,32")
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--out", default=None, help="Folder for the int8 model (default: a temporary folder).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from pocovid.inference import calibration_pixels, export_model, load
    from pocovid.models.runtime import available_runtimes, runtime_version

    tmp = Path(args.out or tempfile.mkdtemp(prefix="pocovid-runtimes-"))
    tmp.mkdir(parents=True, exist_ok=True)
    real = Path(args.real)
    if (real / "pocus_videos" / "convex").is_dir():
        calib, videos = real_sets(real)
        source = f"real: {real}"
    else:
        calib, videos = phantom_sets(tmp)
        source = f"phantom clips (no real data at {real})"
    model = load(args.model)
    print(f"model {args.model}: {model.backbone_name}, {model.n_heads} heads, {model.input_config.size} px, "
          f"findings {len(model.findings)}, severity levels {model.severity_levels}; frames from {source}")
    print("runtimes: " + ", ".join(f"{n} {runtime_version(n)}" for n in available_runtimes())
          + f"; threads {torch.get_num_threads()}; cores {os.cpu_count()}")
    int8_path = None
    if "onnx" in available_runtimes():
        int8_path = tmp / "model-int8.onnx"
        t = time.perf_counter()
        export_model(args.model, int8_path, int8=True, calibration=calib)
        print(f"int8 export (calibration on {len(calib)} recordings): {time.perf_counter() - t:.0f} s, "
              f"{int8_path.stat().st_size / 1e6:.1f} MB")
    px = calibration_pixels(model, videos[1::5], args.frames)  # frames not used in calibration
    x = model.input_tensor(np.resize(px, (args.frames, *px.shape[1:])))
    batches = [int(b) for b in args.batches.split(",")]
    print(f"load average before: {load_avg()}")
    print(f"frames/s (every head + CAMs), {args.frames} frames per measurement, calls of B frames:")
    print(f"  {'runtime':<16}" + "".join(f"{'B=' + str(b):>9}" for b in batches))
    for name, infer in engines(model, int8_path).items():
        print(f"  {name:<16}" + "".join(f"{speed(infer, x, b):>9.1f}" for b in batches), flush=True)
    print(f"load average after: {load_avg()}")
    if int8_path is not None and not args.no_accuracy:
        int8_accuracy(model, int8_path, videos, set(calib))


if __name__ == "__main__":
    main()
