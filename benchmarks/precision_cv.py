"""What a reduced precision (int8, bf16) costs on the cross-validation folds of a finished training
run (issue 13).

    python benchmarks/precision_cv.py [--precision int8|bf16] [--run runs/mt_k5]
                                      [--splits runs/splits/mt_k5.json] [--folds 0,1,2,3,4]
                                      [--max-clips N] [--calibration-n 16] [--torch-clips 2]

For each fold k, fold k's model (`RUN/fold{k}.pt`, trained without fold k) runs in fp32 and in the
reduced precision:
- int8 (the default): the model exported to int8 ONNX (`pocovid.inference.export_model(...,
  int8=True)`), calibrated on `--calibration-n` recordings of the training folds only (spread evenly
  over them, sorted by dataset, label and path: deterministic), on ONNX Runtime, against ONNX
  Runtime fp32 on the exported graph;
- bf16: OpenVINO in bfloat16 (runtime `openvino-bf16`; needs a CPU with bfloat16 arithmetic: AMX
  or AVX512-BF16) against OpenVINO fp32, on the same exported graph; nothing to calibrate.
Every recording of the test fold whose label is one of the model's classes (and of the run's probe;
at most `--max-clips`, spread evenly, default all) goes through the frame pass (`stream_predict`) at
the model's own sampling (its rate and frame cap) on both; the first `--torch-clips` clips of each
fold also on torch, to confirm that the fp32 graph is the model. Clip decision = argmax of the mean
frame probabilities (the run's aggregation).

Printed per fold and over all folds: clip decisions changed (which), clip balanced accuracy and
COVID sensitivity / specificity against the clip labels, fp32 vs reduced (`classification_metrics`),
clip / frame probability differences, frame decision agreement, findings and expected severity
differences, how many fp32 decisions equal the run's out-of-fold ones (`RUN/cv/predictions.csv`),
then one verdict line: nil when balanced accuracy moves by at most one clip's worth (1 / (classes x
smallest class support)), no COVID clip right on fp32 is wrong in the reduced precision and no clip
of another class right on fp32 is called COVID-19 in it. Frames/s of both on one batch of real
frames (int8: onnxruntime and OpenVINO), and the load average at start and end. Temporary files
(int8 models, the runtimes' graph cache) go to a temporary folder, removed at the end.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see speed_models.py)

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SPEED_BATCH = 32


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def spread(items: list, n: int | None) -> list:
    """At most n items, evenly spaced over the list (all when n is None or larger)."""
    if n is None or n >= len(items):
        return list(items)
    if n <= 0:
        return []
    return [items[int(i)] for i in np.round(np.linspace(0, len(items) - 1, n)).astype(int)]


def expected_severity(sev: np.ndarray | None) -> float | None:
    if sev is None:
        return None
    return float(sev.mean((0, 1)) @ np.arange(sev.shape[-1]))


def clip_summary(rec) -> dict:
    o = rec.outputs
    return {"p": rec.probs.mean(0), "frames": rec.probs,
            "findings": None if o.findings is None else o.findings.mean((0, 1)),
            "severity": expected_severity(o.severity)}


def oof_decisions(run: Path) -> dict[str, str]:
    """resolved path -> the run's out-of-fold clip decision (cv/predictions.csv), when there."""
    f = run / "cv" / "predictions.csv"
    if not f.is_file():
        return {}
    with f.open(newline="", encoding="utf-8") as fh:
        return {str(Path(r["path"]).resolve()): r["predicted"] for r in csv.DictReader(fh)}


def speeds(engines: dict, x, rounds: int = 3) -> dict[str, float]:
    """name -> frames/s of one call on the batch x: best of `rounds`, the engines taking turns in each
    round (the other job on the cores moves the load: turns spread that over all of them)."""
    for infer in engines.values():
        infer(x)  # warm-up
    best = {n: float("inf") for n in engines}
    for _ in range(rounds):
        for n, infer in engines.items():
            t = time.perf_counter()
            infer(x)
            best[n] = min(best[n], time.perf_counter() - t)
    return {n: len(x) / b for n, b in best.items()}


def metrics_line(y: np.ndarray, p: np.ndarray, classes: list[str]) -> tuple[str, dict]:
    from pocovid.evaluation.metrics import classification_metrics

    m = classification_metrics(y, p, classes)
    cov = m["per_class"].get("covid", {})

    def f(v):
        return "-" if v is None else f"{v:.3f}"
    return (f"bal.acc {f(m['balanced_accuracy'])}, COVID sens {f(cov.get('sensitivity'))} "
            f"spec {f(cov.get('specificity'))}"), m


def report(title: str, rows: list[dict], classes: list[str], indent: str = "  ", low: str = "int8") -> dict:
    """Print the fp32-vs-`low` figures of `rows` (one per clip); returns the verdict's parts."""
    y = np.array([classes.index(r["label"]) for r in rows])
    pa = np.stack([r["a"]["p"] for r in rows])
    pb = np.stack([r["b"]["p"] for r in rows])
    da, db = pa.argmax(1), pb.argmax(1)
    changed = [r for r, a, b in zip(rows, da, db) if a != b]
    la, ma = metrics_line(y, pa, classes)
    lb, mb = metrics_line(y, pb, classes)
    d = np.abs(pa - pb).max(1)
    fd = np.concatenate([np.abs(r["a"]["frames"] - r["b"]["frames"]).max(1) for r in rows])
    agree = np.concatenate([r["a"]["frames"].argmax(1) == r["b"]["frames"].argmax(1) for r in rows])
    print(f"{title}: {len(rows)} clips ({', '.join(f'{c} {int((y == i).sum())}' for i, c in enumerate(classes))}), "
          f"{len(fd)} frames")
    print(f"{indent}clip decisions changed: {len(changed)} of {len(rows)}")
    for r in changed:
        a, b = r["a"]["p"], r["b"]["p"]
        print(f"{indent}  {r['name']} (label {r['label']}): {classes[a.argmax()]} {a.max():.3f} -> "
              f"{classes[b.argmax()]} {b.max():.3f}")
    print(f"{indent}fp32: {la}")
    print(f"{indent}{low}: {lb}")
    print(f"{indent}clip probabilities |{low} - fp32|: max {d.max():.4f}, mean {d.mean():.4f}; "
          f"frame probabilities: max {fd.max():.4f}, mean {fd.mean():.4f}; frame decisions agree "
          f"{agree.mean() * 100:.1f} %")
    if rows[0]["a"]["findings"] is not None:
        fdiff = np.stack([np.abs(r["a"]["findings"] - r["b"]["findings"]) for r in rows])
        print(f"{indent}clip findings probabilities |diff|: max {fdiff.max():.4f}, mean {fdiff.mean():.4f}")
    if rows[0]["a"]["severity"] is not None:
        sd = np.array([abs(r["a"]["severity"] - r["b"]["severity"]) for r in rows])
        print(f"{indent}clip expected severity level |diff|: max {sd.max():.3f}, mean {sd.mean():.3f}")
    oof = [r for r in rows if r.get("oof")]
    if oof:
        same = sum(r["oof"] == classes[r["a"]["p"].argmax()] for r in oof)
        print(f"{indent}fp32 decisions equal to the run's out-of-fold decisions: {same} of {len(oof)}")
    ci = classes.index("covid") if "covid" in classes else None
    lost = 0 if ci is None else int(np.sum((y == ci) & (da == ci) & (db != ci)))
    gained = 0 if ci is None else int(np.sum((y == ci) & (da != ci) & (db == ci)))
    support = [int((y == i).sum()) for i in range(len(classes))]
    one_clip = 1.0 / (len(classes) * min(s for s in support if s > 0))
    dba = (mb["balanced_accuracy"] or 0.0) - (ma["balanced_accuracy"] or 0.0)
    print(f"{indent}balanced accuracy {low} - fp32: {dba:+.4f} (one clip's worth here: {one_clip:.4f}); "
          f"COVID clips lost by {low}: {lost}, gained: {gained}")
    # clips of other classes that the reduced precision calls COVID-19 and fp32 did not: a specificity cost
    false_new = 0 if ci is None else int(np.sum((y != ci) & (da != ci) & (db == ci)))
    return {"dba": dba, "one_clip": one_clip, "lost": lost, "false_new": false_new}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", choices=("int8", "bf16"), default="int8")
    ap.add_argument("--run", default="runs/mt_k5")
    ap.add_argument("--splits", default="runs/splits/mt_k5.json")
    ap.add_argument("--folds", default=None, help="e.g. 0,2 (default: every fold)")
    ap.add_argument("--max-clips", type=int, default=None, help="test clips per fold, spread evenly (default all)")
    ap.add_argument("--calibration-n", type=int, default=16, help="training-fold recordings to calibrate on")
    ap.add_argument("--torch-clips", type=int, default=2, help="clips per fold also run on torch (fp32 check)")
    args = ap.parse_args()
    low = args.precision

    tmp = tempfile.TemporaryDirectory(prefix="pocovid-precisioncv-")
    # the runtimes' graph cache (one fp32 graph per fold model) in the temporary folder, not the user's
    os.environ["POCOVID_CACHE_DIR"] = str(Path(tmp.name) / "cache")
    import torch

    from pocovid.data.splits import Splits
    from pocovid.inference import export_model, load, stream_predict
    from pocovid.media import MediaError
    from pocovid.models.runtime import OnnxRuntime, OpenVinoRuntime, available_runtimes, runtime_version

    print(f"load average at start: {load_avg()}")
    t_start = time.perf_counter()
    run = Path(args.run)
    splits = Splits.load(args.splits)
    cfg = json.loads((run / "config.json").read_text()).get("config", {}) if (run / "config.json").is_file() else {}
    probe = cfg.get("probe")
    folds = [int(k) for k in args.folds.split(",")] if args.folds else list(range(len(splits.folds)))
    oof = oof_decisions(run)
    print(f"run {run}, splits {args.splits} ({len(splits.folds)} folds, datasets {', '.join(splits.datasets())}); "
          f"probe {probe or 'any'}; runtimes " + ", ".join(f"{n} {runtime_version(n)}" for n in available_runtimes())
          + f"; torch threads {torch.get_num_threads()}, cores {os.cpu_count()}")

    all_rows: list[dict] = []
    torch_diff: list[float] = []
    speed_done = False
    for k in folds:
        t_fold = time.perf_counter()
        model_file = run / f"fold{k}.pt"
        model = load(model_file)
        classes = list(model.classes)
        ic = model.input_config
        train, test = splits.train_test(k)

        def usable(it):
            return probe is None or it.probe == probe

        tests = spread(sorted((it for it in test if usable(it) and it.label in classes),
                              key=lambda i: (i.label, i.dataset, i.path)), args.max_clips)
        n_all = sum(1 for it in test if usable(it) and it.label in classes)
        head = (f"\nfold {k}: model {model_file} (classes {', '.join(classes)}; {ic.rate_hz} Hz, at most "
                f"{ic.max_frames} frames); ")
        if low == "int8":
            calib_items = spread(sorted((it for it in train if usable(it)),
                                        key=lambda i: (i.dataset, i.label, i.path)), args.calibration_n)
            calib = [splits.abspath(it) for it in calib_items]
            int8_path = Path(tmp.name) / f"fold{k}-int8.onnx"
            t = time.perf_counter()
            export_model(model_file, int8_path, int8=True, calibration=calib)
            print(f"{head}int8 calibrated on {len(calib)} training-fold recordings "
                  f"({sum(it.kind == 'image' for it in calib_items)} images) in {time.perf_counter() - t:.0f} s, "
                  f"{int8_path.stat().st_size / 1e6:.1f} MB; test clips {len(tests)} of {n_all}")
            fp32, reduced = OnnxRuntime(model), OnnxRuntime(model, int8_path)
        else:
            if "openvino" not in available_runtimes():
                raise SystemExit("--precision bf16 runs on OpenVINO, which is not installed "
                                 "(pip install 'pocovid[openvino]')")
            fp32, reduced = OpenVinoRuntime(model), OpenVinoRuntime(model, precision="bf16")
            if reduced.precision != "bf16":
                raise SystemExit("OpenVINO has no bfloat16 on this CPU (AMX or AVX512-BF16 needed): nothing to measure")
            print(f"{head}OpenVINO fp32 and bf16; test clips {len(tests)} of {n_all}")
        rows = []
        for j, it in enumerate(tests):
            path = splits.abspath(it)
            kw = dict(rate_hz=ic.rate_hz, max_frames=ic.max_frames)
            try:
                a = stream_predict(path, model, runtime=fp32, keep_pixels=not speed_done, **kw)
                b = stream_predict(path, model, runtime=reduced, **kw)
            except MediaError as e:
                print(f"  skipped {it.dataset}:{it.path}: {e}")
                continue
            if j < args.torch_clips:
                c = stream_predict(path, model, runtime="torch", **kw)
                torch_diff.append(float(np.abs(c.probs - a.probs).max()))
            if not speed_done and len(a.pixels) >= 8:
                px = np.resize(a.pixels, (SPEED_BATCH, *a.pixels.shape[1:]))
                x = model.input_tensor(px)
                engines = {f"{fp32.name} fp32": fp32.infer, f"{reduced.name} {low}": reduced.infer}
                if low == "int8" and "openvino" in available_runtimes():
                    engines["openvino fp32"] = OpenVinoRuntime(model).infer
                    try:
                        engines["openvino int8"] = OpenVinoRuntime(model, int8_path).infer
                    except Exception as e:  # noqa: BLE001 - reported, not fatal
                        print(f"  openvino cannot compile the int8 file: {type(e).__name__}: "
                              + " ".join(str(e).split())[:400])
                fps = speeds(engines, x)
                print(f"  frames/s on one batch of {SPEED_BATCH} frames of {path.name} (best of 3 in turns, load "
                      f"{load_avg()}): " + ", ".join(f"{n} {v:.1f}" for n, v in fps.items()))
                speed_done = True
            rows.append({"name": f"{it.dataset}:{it.path}", "label": it.label, "fold": k,
                         "a": clip_summary(a), "b": clip_summary(b), "oof": oof.get(str(path.resolve()))})
        if not rows:
            print("  no clips")
            continue
        report(f"  fold {k}", rows, classes, indent="    ", low=low)
        print(f"    ({time.perf_counter() - t_fold:.0f} s)", flush=True)
        all_rows += rows

    if not all_rows:
        return
    print()
    v = report(f"all folds ({', '.join(map(str, folds))})", all_rows, classes, low=low)
    if torch_diff:
        print(f"  {fp32.name} fp32 vs torch on {len(torch_diff)} clips: frame probabilities max |diff| "
              f"{max(torch_diff):.2e}")
    nil = abs(v["dba"]) <= v["one_clip"] + 1e-12 and v["lost"] == 0 and v["false_new"] == 0
    capped = f", at most {args.max_clips} clips a fold" if args.max_clips else ""
    print(f"{low} accuracy cost on CV folds: {'nil' if nil else 'not nil'} (balanced accuracy {v['dba']:+.4f}, "
          f"one clip's worth {v['one_clip']:.4f}; COVID clips lost {v['lost']}; new false COVID-19 calls "
          f"{v['false_new']}; folds {', '.join(map(str, folds))}"
          f"{capped})")
    print(f"load average at end: {load_avg()}; {time.perf_counter() - t_start:.0f} s")
    tmp.cleanup()


if __name__ == "__main__":
    main()
