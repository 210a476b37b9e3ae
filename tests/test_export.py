"""ONNX export (`pocovid export`) and the runtimes of the frame pass (torch, onnx, openvino, auto):
the exported graph gives what `FrameClassifier.infer` gives, carries its metadata, runs with
onnxruntime alone; int8 stays within its documented tolerance; a missing runtime falls back to
torch; analyze writes the same result.json whichever runtime ran it. Generated data only."""

import copy
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pocovid.analysis import AnalysisConfig, analyze_recording
from pocovid.cli import app
from pocovid.errors import PocovidError
from pocovid.models import ModelError, OrdinalHead
from pocovid.models import runtime as rt
from pocovid.phantom import write_phantom

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'pocovid[onnx]')")
pytest.importorskip("onnx", reason="onnx is not installed (pip install 'pocovid[onnx]')")

from pocovid.inference import export_model, stream_predict  # noqa: E402
from pocovid.models.export import export_onnx, onnx_bytes, output_names, read_onnx_metadata  # noqa: E402

torch.set_num_threads(1)  # the CI machine has 2 cores, shared
runner = CliRunner()
FINDINGS = ["b_lines", "a_lines", "consolidation"]
#: int8 against fp32 on the phantom test clips (docs/export.md; measured: 0.003, 0.018, 0.025): clip
#: probabilities, frame probabilities, frame findings and severity probabilities
INT8_CLIP_TOL, INT8_FRAME_TOL, INT8_HEADS_TOL = 0.05, 0.1, 0.1


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POCOVID_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model():
    """The quick phantom model with findings and ordinal severity heads added (random, fixed)."""
    from pocovid.testing import quick_phantom_model

    m = quick_phantom_model(size=96, n_heads=2, steps=60)
    torch.manual_seed(1)
    for head in m.heads:
        head.findings = torch.nn.Linear(head.out_channels, len(FINDINGS))
        head.severity = OrdinalHead(head.out_channels, 4)
        with torch.no_grad():
            head.severity.gaps.copy_(torch.tensor([0.5, 1.0]))
    m.findings, m.severity_levels = list(FINDINGS), 4
    m.meta["extra"]["uncertainty"] = {"method": "entropy", "threshold": 0.5}
    return m.eval()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    out = {}
    for label, seed in (("covid", 11), ("pneumonia", 12), ("regular", 13)):
        out[label] = d / f"{label}.mp4"
        write_phantom(out[label], label=label, n_frames=24, fps=12.0, width=240, height=200, overlays=True, seed=seed)
    return out


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "quick.onnx")


def _frames(model, clips, n=6):
    rec = stream_predict(clips["covid"], model, max_frames=n, keep_pixels=True)
    return model.input_tensor(rec.pixels)


def _close(got, want, tol=1e-4):
    """Equal to `tol` of the larger of 1 and the reference's scale (CAMs and pooled are not in [0, 1])."""
    want = np.asarray(want)
    return float(np.abs(np.asarray(got) - want).max()) <= tol * max(1.0, float(np.abs(want).max()))


def test_exported_graph_gives_what_the_model_gives(model, clips, onnx_file):
    x = _frames(model, clips)
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == output_names(model) == [
        "log_probs", "probs", "pooled", "cams", "findings", "severity", "finding_cams"]
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # dynamic batch
    want = model.infer(x, cams=True, finding_cams=True).numpy()
    for b in (1, len(x)):
        got = dict(zip(output_names(model), sess.run(None, {"input": x[:b].numpy()})))
        assert _close(np.exp(got["log_probs"]), want.member_probs[:b])
        assert _close(got["probs"], want.probs[:b])
        for name in ("pooled", "cams", "findings", "severity", "finding_cams"):
            assert got[name].shape == getattr(want, name)[:b].shape, name
            assert _close(got[name], getattr(want, name)[:b]), name


def test_metadata_is_inside_and_reads_with_onnxruntime(model, onnx_file):
    from pocovid import __version__

    meta = read_onnx_metadata(onnx_file)
    assert meta["format"] == "pocovid-onnx" and meta["pocovid_version"] == __version__
    assert meta["precision"] == "fp32" and meta["calibration"] is None
    assert meta["classes"] == model.classes and meta["findings"] == FINDINGS and meta["severity_levels"] == 4
    pre = meta["preprocessing"]
    assert {k: pre[k] for k in model.input_config.to_dict()} == model.input_config.to_dict()
    assert pre["scale"] == 127.5 and pre["mean"] == [1.0, 1.0, 1.0] and pre["std"] == [1.0, 1.0, 1.0]
    assert meta["model_meta"]["extra"]["uncertainty"] == {"method": "entropy", "threshold": 0.5}
    assert meta["model_meta"]["extra"]["feature_density"]["n"] > 0
    assert meta["architecture"] == model.architecture() and meta["n_members"] == 2
    assert meta["model_fingerprint"] == rt.model_fingerprint(model)  # what `analyze --graph` checks
    assert set(meta["outputs"]) == set(output_names(model))


def test_the_file_runs_with_onnxruntime_alone(onnx_file):
    """A user's script: onnxruntime and numpy, no torch and no pocovid."""
    code = f"""
import json, sys
import numpy as np, onnxruntime as ort
s = ort.InferenceSession({str(onnx_file)!r}, providers=["CPUExecutionProvider"])
meta = {{k: json.loads(v) for k, v in s.get_modelmeta().custom_metadata_map.items()}}
p = meta["preprocessing"]
px = np.full((3, p["size"], p["size"]), 128, np.uint8)
x = np.repeat(((px / p["scale"] - p["mean"][0]) / p["std"][0])[:, None], 3, 1).astype(np.float32)
probs = s.run(["probs"], {{"input": x}})[0]
assert probs.shape == (3, len(meta["classes"])) and np.allclose(probs.sum(1), 1, atol=1e-5)
assert "torch" not in sys.modules and "pocovid" not in sys.modules
print(meta["classes"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "covid" in out.stdout


def test_a_model_without_findings_or_severity_exports_without_them(model, clips):
    from pocovid.testing import quick_phantom_model

    plain = quick_phantom_model(size=64, n_heads=1, steps=5, n_frames=2, seeds=(0, 1))
    assert output_names(plain) == ["log_probs", "probs", "pooled", "cams"]
    sess = ort.InferenceSession(onnx_bytes(plain), providers=["CPUExecutionProvider"])
    x = plain.input_tensor(np.full((2, 64, 64), 90, np.uint8))
    got = sess.run(None, {"input": x.numpy()})
    assert len(got) == 4 and _close(got[1], plain.infer(x).probs.numpy())
    out = rt.OnnxRuntime(plain).infer(x)
    assert out.findings is None and out.severity is None and out.cams is not None


@pytest.mark.parametrize("name", ["onnx", "openvino"])
def test_runtimes_give_what_torch_gives(model, clips, name):
    if name == "openvino":
        pytest.importorskip("openvino", reason="openvino is not installed (pip install 'pocovid[openvino]')")
    x = _frames(model, clips)
    want = model.infer(x, cams=True, finding_cams=True).numpy()
    engine = rt.get_runtime(model, name)
    assert engine.name == name and rt.get_runtime(model, name) is engine  # built once per model
    got = engine.infer(x, cams=True, finding_cams=True)
    for field in ("pooled", "cams", "findings", "severity", "finding_cams"):
        assert _close(getattr(got, field), getattr(want, field)), field
    assert _close(got.probs, want.probs) and _close(got.member_probs, want.member_probs)
    assert engine.infer(x, cams=False).cams is None and engine.infer(x).finding_cams is None
    torch.set_num_threads(2)  # two parallel streams, one frame a call: the frames come back in order
    try:
        two = {"onnx": rt.OnnxRuntime, "openvino": rt.OpenVinoRuntime}[name](model)
    finally:
        torch.set_num_threads(1)
    got = two.infer(x, cams=True, finding_cams=True)
    assert two.streams == 2 and all(_close(getattr(got, f), getattr(want, f)) for f in ("probs", "cams", "pooled"))


def test_the_exported_graph_is_cached_for_later_processes(model, clips, monkeypatch):
    """The first build exports the graph into the cache; a later one (another process: nothing built
    in memory) reads the file without exporting; a damaged file is exported again."""
    x = _frames(model, clips, n=2)
    want = model.infer(x, cams=True).numpy()
    fresh = lambda: monkeypatch.setattr(rt, "_BUILT", rt.weakref.WeakKeyDictionary())  # noqa: E731
    fresh()
    assert rt.get_runtime(model, "onnx").name == "onnx" and rt.graph_path(model).is_file()
    import pocovid.models.export as exporter  # the runtime imports it when it exports, not before

    export = exporter.onnx_bytes
    fresh()
    monkeypatch.setattr(exporter, "onnx_bytes", lambda *a, **k: pytest.fail("exported again"))
    assert _close(rt.get_runtime(model, "onnx").infer(x).probs, want.probs)
    rt.graph_path(model).write_bytes(b"not a graph")
    monkeypatch.setattr(exporter, "onnx_bytes", export)
    fresh()
    engine = rt.get_runtime(model, "onnx")
    assert engine.name == "onnx" and _close(engine.infer(x).probs, want.probs)
    assert rt.graph_path(model).stat().st_size > 1000


def test_int8_export_stays_within_its_tolerance(model, saved_model, clips, tmp_path):
    """Static int8 (NNCF, bias-corrected) calibrated on phantom clips; the test clips (other seeds) keep
    their decisions."""
    calib = []
    for i, label in enumerate(("covid", "pneumonia", "regular")):
        calib.append(tmp_path / f"calib_{label}.mp4")
        write_phantom(calib[-1], label=label, n_frames=16, fps=10.0, width=240, height=200, seed=40 + i)
    out = export_model(saved_model, tmp_path / "q.onnx", int8=True, calibration=calib, max_frames=48)
    meta = read_onnx_metadata(out)
    assert meta["precision"] == "int8" and meta["calibration"].startswith("48 frames of 3 recording(s)")
    assert out.stat().st_size < 0.5 * export_onnx(model, tmp_path / "f.onnx").stat().st_size
    q = rt.OnnxRuntime(model, out)
    for label, clip in clips.items():
        a = stream_predict(clip, model, cams=True)
        b = stream_predict(clip, model, cams=True, runtime=q)
        assert np.argmax(a.probs.mean(0)) == np.argmax(b.probs.mean(0)), label
        assert np.abs(a.probs.mean(0) - b.probs.mean(0)).max() <= INT8_CLIP_TOL, label
        assert np.abs(a.probs - b.probs).max() <= INT8_FRAME_TOL, label
        for head in ("findings", "severity"):
            assert np.abs(getattr(a.outputs, head) - getattr(b.outputs, head)).max() <= INT8_HEADS_TOL, (label, head)
    # the trunk is quantised, the heads are not: no head addition (e.g. the severity thresholds) reads
    # a dequantised tensor (OpenVINO could not compile such a file of a trained model)
    import onnx

    graph = onnx.load(str(out)).graph
    dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    adds = [n for n in graph.node if n.op_type == "Add"]
    assert any(set(n.input) & dequantised for n in adds if n.name.startswith("/trunk/"))
    assert not [n.name for n in adds if not n.name.startswith("/trunk/") and set(n.input) & dequantised]
    # nor do the heads' linear layers, CAM products, pooling or ensemble mean: they stay float
    from pocovid.models.export import INT8_FLOAT_OPS

    assert not [n.name for n in graph.node if n.op_type in INT8_FLOAT_OPS and set(n.input) & dequantised]
    with pytest.raises(PocovidError, match="calibration"):
        export_model(saved_model, tmp_path / "x.onnx", int8=True)


def _hide(monkeypatch, *modules):
    """Make `import <module>` fail, as where the runtime is not installed."""
    import builtins

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.split(".")[0] in modules:
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    for m in list(sys.modules):
        if m.split(".")[0] in modules:
            monkeypatch.delitem(sys.modules, m)
    monkeypatch.setattr(builtins, "__import__", fake)


def test_int8_without_nncf_says_what_to_install(saved_model, clips, tmp_path, monkeypatch):
    _hide(monkeypatch, "nncf")
    with pytest.raises(PocovidError, match=r"int8 export needs NNCF.*pip install 'pocovid\[int8\]'"):
        export_model(saved_model, tmp_path / "q.onnx", int8=True, calibration=[clips["covid"]], max_frames=8)
    assert not (tmp_path / "q.onnx").exists()


def test_a_missing_runtime_falls_back_to_torch_with_a_notice(model, monkeypatch, caplog):
    _hide(monkeypatch, "onnxruntime", "openvino")
    monkeypatch.setattr(rt, "_NOTICED", set())
    assert rt.available_runtimes() == ["torch"]
    with caplog.at_level(logging.WARNING, logger="pocovid"):
        engine = rt.get_runtime(model, "onnx")
        rt.get_runtime(model, "onnx")
    assert engine.name == "torch"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0] and "onnx is not installed" in lines[0], lines
    monkeypatch.setattr(rt, "measure", lambda *a, **k: pytest.fail("nothing to measure with torch alone"))
    assert rt.get_runtime(model, "auto").name == "torch"


def test_a_runtime_that_fails_falls_back_to_torch(model, monkeypatch, caplog):
    def broken(self, model, path=None):
        raise RuntimeError("cannot\nload")

    monkeypatch.setattr(rt.OnnxRuntime, "__init__", broken)
    monkeypatch.setattr(rt, "_BUILT", rt.weakref.WeakKeyDictionary())
    with caplog.at_level(logging.WARNING, logger="pocovid"):
        assert rt.get_runtime(model, "onnx").name == "torch"
    assert any("failed to load the model (RuntimeError: cannot load)" in r.getMessage() for r in caplog.records)


def test_auto_measures_once_and_remembers(model, monkeypatch, tmp_path):
    speeds = {"torch": 10.0, "onnx": 30.0, "openvino": 20.0}  # frames/s; the engines stand in by name
    monkeypatch.setattr(rt, "available_runtimes", lambda: list(speeds))
    monkeypatch.setattr(rt, "TorchRuntime", lambda m, build=True: "torch")
    monkeypatch.setattr(rt, "_built", lambda m, name, build: name)
    calls = []
    monkeypatch.setattr(rt, "measure", lambda engine, m: calls.append(engine) or speeds[engine])
    assert rt.choose_runtime(model) == "onnx" and len(calls) == 3
    cache = json.loads((tmp_path / "cache" / rt.CACHE_FILE).read_text())
    (entry,) = cache.values()
    assert entry["runtime"] == "onnx" and entry["frames_per_s"] == speeds and len(entry["load_average"]) == 3
    assert rt.choose_runtime(model) == "onnx" and len(calls) == 3  # remembered: not measured again
    assert rt.runtime_name(model, "auto", build=False) == "onnx"
    with pytest.raises(ModelError, match="unknown runtime 'tpu'"):
        rt.get_runtime(model, "tpu")
    with pytest.raises(PocovidError, match="unknown runtime"):
        AnalysisConfig(runtime="tpu").check()


def _same_up_to_rounding(a, b, where="result"):
    """Equal, but for numbers within 1e-5 (relative) or, for rounded ones, one step of their printed
    precision apart (float32 sums in another order round the other way: 0.15625 -> 0.1562 / 0.1563)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same_up_to_rounding(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_up_to_rounding(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        decimals = max(len(repr(v).partition(".")[2]) for v in (a, b))
        step = 10.0 ** -decimals if decimals <= 6 else 0.0
        assert abs(a - b) <= max(1e-5 * max(1.0, abs(a)), 1.01 * step), (where, a, b)
    else:
        assert a == b, (where, a, b)


def test_analyze_writes_the_same_result_on_torch_and_onnx(model, clips, tmp_path):
    results = {}
    for name in ("torch", "onnx"):
        r = analyze_recording(clips["pneumonia"], model, tmp_path / name, AnalysisConfig(runtime=name, report=False))
        data = json.loads((tmp_path / name / "result.json").read_text())
        assert data == json.loads(r.model_dump_json())
        assert data["model_info"]["runtime"] == name  # which runtime ran is recorded
        del data["timings"], data["created"], data["model_info"]["runtime"]
        results[name] = data
    _same_up_to_rounding(results["torch"], results["onnx"])
    assert results["torch"]["prediction"]["label"] == results["onnx"]["prediction"]["label"]
    assert [k["index"] for k in results["torch"]["key_frames"]] == [k["index"] for k in results["onnx"]["key_frames"]]


def test_cli_export_and_analyze_runtime(saved_model, clips, tmp_path):
    out = tmp_path / "m.onnx"
    r = runner.invoke(app, ["export", str(saved_model), "--format", "onnx", str(out)])
    assert r.exit_code == 0, r.output
    assert "fp32 ONNX" in r.output and read_onnx_metadata(out)["classes"] == ["covid", "pneumonia", "regular"]
    r = runner.invoke(app, ["export", str(saved_model), "--format", "tflite", str(tmp_path / "m.tflite")])
    assert r.exit_code != 0 and "only onnx" in r.output
    r = runner.invoke(app, ["export", str(saved_model), str(out), "--calibration", str(clips["covid"])])
    assert r.exit_code != 0 and "--calibration is for --int8" in r.output
    r = runner.invoke(app, ["analyze", str(clips["covid"]), "--model", str(saved_model), "--runtime", "tpu",
                            "-o", str(tmp_path / "a")])
    assert r.exit_code != 0 and "--runtime" in r.output and "unknown runtime" in r.output


def _one_line_error(r, *words):
    assert r.exit_code == 1, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_cli_analyze_runs_an_int8_graph_given_with_graph(model, saved_model, clips, tmp_path):
    """`pocovid export --int8` then `pocovid analyze --graph`: the frame pass runs the file, the result
    says onnx and int8; `--resume` keeps it only for the same graph; torch, a missing file, a file that
    is not ONNX, a graph of another model (or of an unknown one) are refused with one line, exit 1."""
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, label in enumerate(("covid", "pneumonia", "regular")):
        write_phantom(calib / f"{label}.mp4", label=label, n_frames=16, fps=10.0, width=240, height=200, seed=40 + i)
    q = tmp_path / "model-int8.onnx"
    r = runner.invoke(app, ["export", str(saved_model), "--int8", "--calibration", str(calib), str(q)])
    assert r.exit_code == 0 and "int8 ONNX" in r.output, r.output
    base = ["analyze", str(clips["covid"]), "--model", str(saved_model), "--no-overlay-video", "--quiet"]
    out = tmp_path / "a"
    r = runner.invoke(app, [*base, "--graph", str(q), "--runtime", "onnx", "-o", str(out)])
    assert r.exit_code == 0, r.output
    info = json.loads((out / "covid" / "result.json").read_text())["model_info"]
    assert info["runtime"] == "onnx" and info["precision"] == "int8" and info["graph"] == q.name
    assert info["graph_sha256"] == rt.hashlib.sha256(q.read_bytes()).hexdigest()
    r = runner.invoke(app, [*base, "--graph", str(q), "-o", str(out), "--resume"])  # auto -> onnx; the same file
    assert r.exit_code == 0 and "1 of 1 recording(s) skipped" in r.stderr, r.output
    r = runner.invoke(app, [*base, "--runtime", "onnx", "-o", str(out), "--resume", "--json"])  # without it: fp32
    assert r.exit_code == 0, r.output
    (res,) = json.loads(r.stdout)
    assert res["model_info"]["precision"] == "fp32" and res["model_info"]["graph"] is None  # redone, not kept
    r = runner.invoke(app, [*base, "--graph", str(q), "-o", str(out), "--resume", "--json"])  # fp32 result: redone
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["model_info"]["precision"] == "int8", r.output

    _one_line_error(runner.invoke(app, [*base, "--graph", str(q), "--runtime", "torch", "-o", str(out)]),
                    "--graph", "torch")
    _one_line_error(runner.invoke(app, [*base, "--graph", str(tmp_path / "none.onnx"), "-o", str(out)]),
                    "--graph", "none.onnx", "no such graph file")
    (tmp_path / "text.onnx").write_text("not a graph")
    _one_line_error(runner.invoke(app, [*base, "--graph", str(tmp_path / "text.onnx"), "-o", str(out)]),
                    "text.onnx", "not a readable ONNX graph")
    other = copy.deepcopy(model)  # the same architecture, other weights
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    export_onnx(other, tmp_path / "other.onnx")
    _one_line_error(runner.invoke(app, [*base, "--graph", str(tmp_path / "other.onnx"), "-o", str(out)]),
                    "other.onnx", "another model")
    import onnx

    old = onnx.load(str(q))  # an export that does not say which model it is (before model_fingerprint)
    keep = [p for p in old.metadata_props if p.key != "model_fingerprint"]
    del old.metadata_props[:]
    old.metadata_props.extend(keep)
    onnx.save_model(old, str(tmp_path / "old.onnx"))
    _one_line_error(runner.invoke(app, [*base, "--graph", str(tmp_path / "old.onnx"), "-o", str(out)]),
                    "old.onnx", "does not identify the model")
    with pytest.raises(PocovidError, match="not torch"):
        AnalysisConfig(runtime="torch", graph=str(q)).check()


def test_an_int8_graph_runs_on_openvino(model, clips, tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'pocovid[openvino]')")
    calib = [model.input_tensor(stream_predict(c, model, max_frames=8, keep_pixels=True).pixels).numpy()
             for c in clips.values()]
    q = export_onnx(model, tmp_path / "q.onnx", calibration=calib)
    r = analyze_recording(clips["regular"], model, tmp_path / "ov",
                          AnalysisConfig(runtime="openvino", graph=str(q), report=False))
    want = analyze_recording(clips["regular"], model, tmp_path / "t", AnalysisConfig(runtime="torch", report=False))
    assert r.model_info.runtime == "openvino" and r.model_info.precision == "int8" and r.model_info.graph == "q.onnx"
    assert want.model_info.precision == "fp32" and want.model_info.graph is None
    assert r.prediction.label == want.prediction.label


def test_openvino_bf16_is_asked_for_by_name_and_says_so(model, saved_model, clips, tmp_path):
    """`--runtime openvino-bf16`: OpenVINO in bfloat16 where the CPU has it (its result says bf16 and
    stays near fp32), fp32 elsewhere (and says fp32); never a candidate of `auto`; `--resume` redoes an
    fp32 result under it; no graph file with it."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'pocovid[openvino]')")
    want_precision = rt.runtime_precision("openvino-bf16")  # bf16 on AMX / AVX512-BF16 CPUs, else fp32
    assert rt.runtime_precision("openvino") == "fp32" and "openvino-bf16" not in rt.available_runtimes()
    x = _frames(model, clips)
    want = model.infer(x, cams=True, finding_cams=True).numpy()
    engine = rt.get_runtime(model, "openvino-bf16")
    assert engine.name == "openvino" and engine.precision == want_precision
    assert engine is rt.get_runtime(model, "openvino-bf16") is not rt.get_runtime(model, "openvino")
    got = engine.infer(x, cams=True)
    tol = 1e-4 if want_precision == "fp32" else 0.05  # bfloat16 keeps 8 bits of mantissa
    assert np.abs(got.probs - want.probs).max() <= tol and np.abs(got.findings - want.findings).max() <= tol

    base = ["analyze", str(clips["covid"]), "--model", str(saved_model), "--no-overlay-video", "--quiet"]
    out = tmp_path / "a"
    r = runner.invoke(app, [*base, "--runtime", "openvino", "-o", str(out)])
    assert r.exit_code == 0, r.output
    fp32 = json.loads((out / "covid" / "result.json").read_text())
    r = runner.invoke(app, [*base, "--runtime", "openvino-bf16", "-o", str(out), "--resume", "--json"])
    assert r.exit_code == 0, r.output
    (res,) = json.loads(r.stdout)
    assert res["model_info"]["runtime"] == "openvino" and res["model_info"]["precision"] == want_precision
    redone = "1 of 1 recording(s) skipped" not in r.stderr
    assert redone == (want_precision == "bf16"), r.stderr  # an fp32 result is kept only where bf16 is fp32
    p_fp32, p_bf16 = fp32["prediction"]["probabilities"], res["prediction"]["probabilities"]
    assert all(abs(p_fp32[c] - p_bf16[c]) <= tol for c in p_fp32)
    r = runner.invoke(app, [*base, "--runtime", "openvino-bf16", "-o", str(out), "--resume"])  # now its own
    assert r.exit_code == 0 and "1 of 1 recording(s) skipped" in r.stderr, r.output

    onnx_graph = export_onnx(model, tmp_path / "m.onnx")
    _one_line_error(runner.invoke(app, [*base, "--graph", str(onnx_graph), "--runtime", "openvino-bf16",
                                        "-o", str(out)]), "own precision", "openvino-bf16")
    with pytest.raises(PocovidError, match="own precision"):
        AnalysisConfig(runtime="openvino-bf16", graph=str(onnx_graph)).check()
    with pytest.raises(ModelError, match="own precision"):
        rt.graph_runtime(model, "openvino-bf16", onnx_graph)



def test_openvino_bf16_without_openvino_runs_torch_with_a_notice(model, monkeypatch, caplog):
    _hide(monkeypatch, "openvino")
    monkeypatch.setattr(rt, "_NOTICED", set())
    monkeypatch.setattr(rt, "_BUILT", rt.weakref.WeakKeyDictionary())
    monkeypatch.setattr(rt, "_openvino_has_bf16", rt.functools.cache(rt._openvino_has_bf16.__wrapped__))  # asked anew
    assert rt.runtime_precision("openvino-bf16") == "fp32"
    with caplog.at_level(logging.WARNING, logger="pocovid"):
        engine = rt.get_runtime(model, "openvino-bf16")
    assert engine.name == "torch" and engine.precision == "fp32"
    assert any("runtime openvino-bf16 is not installed (pip install 'pocovid[openvino]')" in r.getMessage()
               for r in caplog.records)
