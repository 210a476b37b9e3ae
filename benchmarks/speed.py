"""Issue 13, "faster than real time on a laptop": every target row in one run, with the load average.

    python benchmarks/speed.py [--model default|FILE] [--runtimes torch,onnx,openvino,openvino-bf16,auto]
                               [--int8 RECORDING ...] [--repeats 2] [--archive-n 100] [--skip-archive]
                               [--skip-vgg]

Rows (benchmarks, not timed tests; the machine may be shared: the load average is printed at each
step, and the figures move with it):
  model          frames/s of the model on each runtime: trunk + every head + CAMs (what `analyze`
                 asks for), batches of 32 prepared frames of the clip as the frame pass feeds them;
                 target >= 200 frames/s on 2 cores (openvino-bf16: bfloat16 where the CPU has it,
                 an opt-in whose accuracy cost benchmarks/precision_cv.py measures)
  int8           with --int8 RECORDINGS: the model exported to int8 (`pocovid export --int8`, calibrated
                 on those real recordings, not on the phantom clip), then the model and analyze rows
                 once more on that file (`analyze --graph FILE --runtime onnx|openvino`); its accuracy
                 cost is what benchmarks/precision_cv.py measures
  vgg16          frames/s of VGG-16 (the paper's backbone; random weights: speed does not depend on
                 the values) at the default cut with its pooled head, batch 32, eager, as
                 benchmarks/speed_models.py times it; target: the default model >= 25x that
  analyze        `pocovid analyze CLIP --runtime R` on a generated 10 s / 30 fps / 800x600 phantom
                 clip (every frame, key-frame heatmaps, timeline, report), each in a fresh process:
                 wall time, peak memory (the child's own VmHWM, read at its exit: the max RSS that
                 wait4 reports would also count this benchmark's memory it was forked from) and where
                 the time goes. The first run of a runtime starts with an empty pocovid cache (it
                 builds the runtime and writes the cache: ONNX graph, OpenVINO model, traced trunk, the
                 `auto` choice), the next `--repeats` find it; target <= 4 s wall, <= 0.6 GB
  archive        benchmarks/archive.py with --archive-n clips: Ray on 2 workers against the plain
                 loop; target >= 1.7x
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see speed_models.py)

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from analyze_speed import make_clip  # noqa: E402

#: packages `pocovid analyze` should not need on its default path (listed when the child imported them)
HEAVY = ("matplotlib", "monai", "scipy", "sklearn", "fastapi", "onnx", "onnxruntime", "openvino", "ray",
         "pandas", "sympy", "jinja2")

# The child: `pocovid analyze ...` as the installed command runs it, with timers around the import of
# the analysis code, the model load and the runtime build; its own peak memory and the wall clock at
# exit (the interpreter's teardown comes after).
_CHILD = r"""
import atexit, json, sys, time
T0, W0 = time.perf_counter(), time.time()
out, heavy = sys.argv[1], sys.argv[2].split(",")
stages = {"wall_start": W0}
def _exit():
    stages["in_process_s"] = time.perf_counter() - T0
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            stages["peak_gb"] = int(line.split()[1]) / 2**20
    stages["heavy_imports"] = sorted({m.split(".")[0] for m in sys.modules} & set(heavy))
    stages["wall_exit"] = time.time()
    with open(out, "w") as f:
        json.dump(stages, f)
atexit.register(_exit)
t = time.perf_counter()
import pocovid.cli, pocovid.analysis.analyze as A, pocovid.inference as I
stages["import_s"] = time.perf_counter() - t
def timed(mod, name, key):
    f = getattr(mod, name)
    def g(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            stages[key] = stages.get(key, 0.0) + time.perf_counter() - t
    setattr(mod, name, g)
timed(A, "load", "model_load_s")
timed(I, "get_runtime", "runtime_build_s")
sys.argv = ["pocovid", *sys.argv[3:]]
pocovid.cli.main()
"""


def load_avg() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def frames_per_s(infer, x: torch.Tensor, batch: int = 32, passes: int = 2) -> float:
    """Frames/s of `infer` over `x` in calls of `batch` frames: best of `passes` after a warm-up call."""
    infer(x[:batch])
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            infer(x[i:i + batch])
        best = min(best, time.perf_counter() - t)
    return len(x) / best


def model_rows(spec: str, clip: Path, runtimes: list[str], n_frames: int = 128,
               graph: Path | None = None) -> dict[str, float]:
    """frames/s per runtime on `n_frames` prepared frames of the clip (every head + CAMs); with
    `graph` (an int8 file of the model) runtimes onnx and openvino on it as well."""
    from pocovid.inference import calibration_pixels, load
    from pocovid.models.runtime import base_runtime, get_runtime, graph_runtime, runtime_name

    model = load(spec)
    px = calibration_pixels(model, [clip], n_frames)
    x = model.input_tensor(np.resize(px, (n_frames, *px.shape[1:])))
    out = {}
    for name in runtimes:
        engine = get_runtime(model, runtime_name(model, name))
        label = f"auto ({engine.name})" if name == "auto" else name
        if name != "auto" and engine.name != base_runtime(name):
            label += f" (fell back to {engine.name})"
        elif name != base_runtime(name) and engine.precision == "fp32":
            label += " (fp32: this CPU has no bfloat16)"
        out[label] = frames_per_s(lambda b, e=engine: e.infer(b, cams=True), x)
    for name in (["onnx", "openvino"] if graph is not None else []):
        if name in runtimes:
            engine = graph_runtime(model, name, graph)
            out[f"{name} int8"] = frames_per_s(lambda b, e=engine: e.infer(b, cams=True), x)
    return out


def vgg_row(batch: int = 32) -> float:
    """frames/s of VGG-16 (random weights) at its default cut with the pooled head, eager, no grad."""
    from pocovid.models import create_model

    torch.manual_seed(0)
    model = create_model("vgg16", pretrained=False).eval()
    x = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        return frames_per_s(model, x, batch, passes=2)


def run_analyze(clip: Path, spec: str, runtime: str, out: Path, cache: Path, src: str | None = None,
                graph: Path | None = None) -> dict:
    """One `pocovid analyze` in a fresh process: wall, CPU time, peak memory, stages (see _CHILD);
    `src`: the pocovid source folder to run instead of this one's (e.g. an earlier commit's)."""
    stages_file = out.parent / f"{out.name}.stages.json"
    stages_file.unlink(missing_ok=True)
    env = dict(os.environ, POCOVID_CACHE_DIR=str(cache))
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0, t = time.time(), time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _CHILD, str(stages_file), ",".join(HEAVY), "analyze", str(clip),
                        "--model", spec, "--out", str(out), "--runtime", runtime, "--quiet",
                        *(["--graph", str(graph)] if graph else [])],
                       capture_output=True, text=True, env=env)
    wall, w1 = time.perf_counter() - t, time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        return {"wall_s": wall, "error": f"exit {p.returncode}: {p.stderr.strip()[-400:]}"}
    s = json.loads(stages_file.read_text())
    r = json.loads((out / clip.stem / "result.json").read_text())
    s.update(wall_s=wall, timings=r["timings"], n=r["sampling"]["n_frames_analyzed"],
             ran_on=" ".join(str(mi.get(k)) for k in ("runtime", "precision") if (mi := r.get("model_info") or {})),
             stderr=p.stderr.strip(),
             start_s=s["wall_start"] - w0, exit_s=w1 - s["wall_exit"],
             cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))
    return s


def stage_line(s: dict) -> str:
    """Where the wall time of one analyze run goes, in the order it happens (what runs beside it in
    other threads in brackets)."""
    t = dict(s["timings"])
    g = lambda k: t.get(k, 0.0)  # noqa: E731
    total = g("total_s")
    key_frames = g("key_frames_decode_s") + g("key_frames_render_s")
    known = ("open_s", "runtime_choice_s", "region_s", "frames_s", "explain_s", "video_s", "report_s")
    if "frames_s" not in t:  # pocovid before the frame pass timed itself (--src of an earlier commit)
        t["frames_s"] = total - key_frames - g("timeline_s") - sum(g(k) for k in known)
    parts = [("start", s["start_s"]), ("import", s["import_s"]), ("model load", s.get("model_load_s", 0.0)),
             ("open", g("open_s")), ("runtime choice", g("runtime_choice_s")), ("region", g("region_s")),
             ("frame pass", g("frames_s")), ("explain", g("explain_s")), ("key frames", key_frames),
             ("timeline", g("timeline_s")), ("overlay video", g("video_s")), ("report", g("report_s")),
             ("rest of analysis", total - key_frames - g("timeline_s") - sum(g(k) for k in known)),
             ("CLI rest", s["in_process_s"] - s["import_s"] - s.get("model_load_s", 0.0) - total),
             ("exit", s["exit_s"])]
    line = ", ".join(f"{k} {v:.2f}" for k, v in parts if abs(v) >= 0.005) + " s"
    side = (f"runtime build {s.get('runtime_build_s', 0):.2f} s beside the region search and the first frames; "
            f"frame pass: model {g('model_s'):.2f} s, decode thread beside it: decode {g('decode_s'):.2f}, "
            f"pixels {g('crop_resize_s'):.2f}, image cues {g('inspect_s'):.2f} s; key frames: decode "
            f"{g('key_frames_decode_s'):.2f}, render {g('key_frames_render_s'):.2f} s)")
    return f"{line}\n      ({side}"


def analyze_rows(clip: Path, spec: str, runtimes: list[str], repeats: int, tmp: Path, src: str | None = None,
                 graph: Path | None = None) -> None:
    """`runtimes` each, then (with `graph`, an int8 file) onnx and openvino on that file, in the
    cache the runtime's own runs left (a site that has run analyze before: the model file's graph
    record is there, so a `--graph` run needs no PyTorch)."""
    runs = [(rt, None) for rt in runtimes] + [(rt, graph) for rt in ("onnx", "openvino")
                                              if graph is not None and rt in runtimes]
    caches: dict[str, Path] = {}
    for rt, g in runs:
        name = f"{rt} --graph {g.name}" if g else rt
        warm = g is not None and rt in caches
        cache = caches.setdefault(rt, Path(tempfile.mkdtemp(prefix=f"pocovid-cache-{rt}-", dir=tmp)))
        for k in range(1 + repeats):
            s = run_analyze(clip, spec, rt, tmp / f"out-{rt}-{k}{'-int8' if g else ''}", cache, src, g)
            what = ("first run of the file, cache of the fp32 runs" if warm else "first run, empty cache") \
                if k == 0 else "cache warm"
            if "error" in s:
                print(f"  analyze --runtime {name} ({what}): FAILED {s['error']}")
                continue
            ok = s["wall_s"] <= 4.0 and s["peak_gb"] <= 0.6
            print(f"  analyze --runtime {name} ({what}; ran on {s['ran_on']}): {s['wall_s']:.2f} s wall, "
                  f"{s['cpu_s']:.2f} s CPU, peak memory {s['peak_gb']:.2f} GB "
                  f"[target <= 4 s, <= 0.6 GB: {'OK' if ok else 'MISSED'}]; {load_avg()}")
            print(f"      {stage_line(s)}")
            if s["heavy_imports"]:
                print(f"      imported: {', '.join(s['heavy_imports'])}")
            if s["stderr"]:
                print(f"      stderr: {s['stderr'][-300:]}")


def archive_row(n: int, frames: int, workers: int, spec: str) -> None:
    from archive import measure_archive, print_archive

    print_archive(measure_archive(n, frames, workers, spec), prefix="  ")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--runtimes", default="torch,onnx,openvino,openvino-bf16,auto")
    ap.add_argument("--repeats", type=int, default=2, help="analyze runs per runtime after the first (default 2)")
    ap.add_argument("--archive-n", type=int, default=100, help="clips for the archive row (default 100, as the target)")
    ap.add_argument("--int8", nargs="+", default=None, metavar="RECORDING",
                    help="also the model exported to int8, calibrated on these real recordings (files or folders)")
    ap.add_argument("--skip-archive", action="store_true")
    ap.add_argument("--skip-vgg", action="store_true")
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--src", default=None, help="analyze rows: run this pocovid source folder instead, e.g. DIR/src "
                                                "after `git archive COMMIT src | tar -x -C DIR` (before / after)")
    a = ap.parse_args(argv)
    from pocovid.models.runtime import available_runtimes, base_runtime, runtime_version

    runtimes = [r for r in a.runtimes.split(",") if r == "auto" or base_runtime(r) in available_runtimes()]
    tmp = Path(tempfile.mkdtemp(prefix="pocovid-speed-"))
    bench = Path(tempfile.gettempdir()) / "pocovid-analyze-bench"  # the clip analyze_speed.py makes, shared
    bench.mkdir(exist_ok=True)
    clip = make_clip(bench / "phantom_800x600_10s_30fps.mp4")
    print(f"issue 13 speed rows; {os.cpu_count()} cores, torch {torch.__version__} on {torch.get_num_threads()} "
          f"threads, runtimes " + ", ".join(f"{n} {runtime_version(n)}" for n in available_runtimes())
          + f"; {load_avg()}")
    print(f"clip: {clip.name} (800x600, 300 frames, 30 fps, H.264); model {a.model}")
    graph = None
    if a.int8:
        from pocovid.analysis.inputs import collect_recordings
        from pocovid.inference import export_model

        recordings = collect_recordings(a.int8).paths
        t = time.perf_counter()
        graph = export_model(a.model, tmp / "model-int8.onnx", int8=True, calibration=recordings)
        print(f"int8: exported, calibrated on {len(recordings)} recordings, in {time.perf_counter() - t:.0f} s")
    fps = {}
    if not a.skip_model:
        fps = model_rows(a.model, clip, [r for r in runtimes if r != "auto"], graph=graph)
        for name, v in fps.items():
            print(f"  model on {name}: {v:.0f} frames/s (every head + CAMs, batches of 32) "
                  f"[target >= 200: {'OK' if v >= 200 else 'MISSED'}]")
        print(f"  ({load_avg()})")
    if not a.skip_vgg:
        v = vgg_row()
        print(f"  VGG-16 reference (random weights, default cut + pooled head, batch 32, eager): {v:.1f} frames/s")
        for name, f in fps.items():
            ok = "OK" if f / v >= 25 else "MISSED"
            print(f"  default model on {name} / VGG-16: {f / v:.1f}x [target >= 25x: {ok}]")
        print(f"  ({load_avg()})")
    if a.src:
        print(f"analyze rows on the pocovid source in {a.src}")
    try:
        analyze_rows(clip, a.model, runtimes, a.repeats, tmp, a.src, graph)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not a.skip_archive:
        archive_row(a.archive_n, 20, 2, a.model)
    print(f"done; {load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
