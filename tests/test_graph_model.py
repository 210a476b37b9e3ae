"""A model run from its cached exported graph, without PyTorch (models/graph_model.py): the second
`pocovid analyze` of a model file on a graph runtime imports no torch and writes the same result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pocovid.analysis import AnalysisConfig
from pocovid.analysis.analyze import resolve_model
from pocovid.inference import load
from pocovid.models.graph_model import GraphModel, cached_graph_model
from pocovid.phantom import write_phantom

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'pocovid[onnx]')")
pytest.importorskip("onnx", reason="onnx is not installed (pip install 'pocovid[onnx]')")

#: analyze in a fresh process, then say which heavy modules it imported
_CHILD = """
import sys
from pocovid.cli import app
try:
    app(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("IMPORTED", sorted(m for m in ("torch", "monai", "onnx") if m in sys.modules))
sys.exit(code)
"""

#: what may differ between two analyses of one recording (when, how long, which process)
_VARYING = ("created", "timings")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("clip") / "covid.mp4"
    write_phantom(p, label="covid", n_frames=24, fps=12.0, width=240, height=200, overlays=True, seed=7)
    return p


def _analyze(clip: Path, model_file: Path, out: Path, cache: Path, runtime: str, *extra: str) -> tuple[dict, str]:
    env = dict(os.environ, POCOVID_CACHE_DIR=str(cache))
    p = subprocess.run([sys.executable, "-c", _CHILD, "analyze", str(clip), "--model", str(model_file), "--out",
                        str(out), "--runtime", runtime, "--quiet", *extra], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    imported = next(line for line in p.stdout.splitlines() if line.startswith("IMPORTED"))
    result = json.loads((out / clip.stem / "result.json").read_text())
    return {k: v for k, v in result.items() if k not in _VARYING}, imported


def test_the_second_analysis_runs_without_torch_and_agrees(clip, model_file, tmp_path):
    cache = tmp_path / "cache"
    first, imported = _analyze(clip, model_file, tmp_path / "a", cache, "auto")
    assert "'torch'" in imported  # the model file is loaded, auto measured, the graph exported and described
    for k, runtime in enumerate(("auto", "onnx")):
        again, imported = _analyze(clip, model_file, tmp_path / f"b{k}", cache, runtime)
        if runtime == "auto" and first["model_info"]["runtime"] == "torch":  # measured fastest here: torch it is
            assert "'torch'" in imported
            continue
        assert imported == "IMPORTED []", runtime
        if again["model_info"]["runtime"] == first["model_info"]["runtime"]:
            assert again == first, runtime
        else:  # the same frame pass on another runtime: the same decision, probabilities within 1e-4
            _same_decision(again, first)
    # an exported file given with --graph: checked against the cached graph's fingerprint, no torch
    from pocovid.models.export import export_onnx

    graph_file = export_onnx(load(model_file), tmp_path / "mine.onnx")
    again, imported = _analyze(clip, model_file, tmp_path / "c", cache, "onnx", "--graph", str(graph_file))
    assert imported == "IMPORTED []"
    assert again["model_info"]["graph"] == "mine.onnx" and again["model_info"]["precision"] == "fp32"
    _same_decision(again, first)


def _same_decision(a: dict, b: dict) -> None:
    assert a["prediction"]["label"] == b["prediction"]["label"]
    for c, v in b["prediction"]["probabilities"].items():
        assert abs(a["prediction"]["probabilities"][c] - v) <= 1e-4


def test_gradcam_and_torch_still_load_the_model_file(model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("POCOVID_CACHE_DIR", str(tmp_path / "cache"))
    from pocovid.models.runtime import get_runtime

    get_runtime(load(model_file), "onnx")  # the graph exported and the file described, as a first run does
    graph_file = tmp_path / "g.onnx"
    graph_file.write_bytes(b"")
    # a graph file given (--graph) is checked against the cached graph's fingerprint: no torch either
    for cfg in (AnalysisConfig(runtime="onnx"), AnalysisConfig(runtime="onnx", graph=str(graph_file))):
        assert isinstance(resolve_model(str(model_file), cfg)[0], GraphModel), cfg
    for cfg in (AnalysisConfig(runtime="onnx", explainer="gradcam"), AnalysisConfig(runtime="torch")):
        assert not isinstance(resolve_model(str(model_file), cfg)[0], GraphModel), cfg
    assert not isinstance(resolve_model(str(model_file))[0], GraphModel)  # no config: the exam, the service


def test_the_cached_graph_is_found_only_for_the_same_file(model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("POCOVID_CACHE_DIR", str(tmp_path / "cache"))
    assert cached_graph_model(model_file, "onnx") is None  # nothing cached yet
    m, _ = resolve_model(str(model_file), AnalysisConfig(runtime="onnx"))
    assert not isinstance(m, GraphModel)
    from pocovid.models.runtime import get_runtime

    get_runtime(m, "onnx")  # exports the graph and describes the file
    g = cached_graph_model(model_file, "onnx", "mine")
    assert isinstance(g, GraphModel) and g.meta["source"] == "mine"
    assert (g.classes, g.findings, g.severity_levels, g.input_config) == \
        (list(m.classes), list(m.findings or []), int(m.severity_levels or 0), m.input_config)
    assert cached_graph_model(model_file, "torch") is None
    assert cached_graph_model(model_file, "auto") is None  # auto not measured yet
    other = tmp_path / "other.pt"
    other.write_bytes(model_file.read_bytes() + b"\0")  # other bytes: not the file the graph was made from
    assert cached_graph_model(other, "onnx") is None
    px = np.random.default_rng(0).integers(0, 256, (2, g.input_config.size, g.input_config.size), dtype=np.uint8)
    np.testing.assert_array_equal(g.input_tensor(px), m.input_tensor(px).numpy())
    # a record left by another pocovid version is not trusted
    record = next((tmp_path / "cache" / "models").glob("*.json"))
    data = json.loads(record.read_text())
    record.write_text(json.dumps(dict(data, pocovid_version="0.0.0")))
    assert cached_graph_model(model_file, "onnx") is None
    record.write_text("{not json")
    assert cached_graph_model(model_file, "onnx") is None


def test_importing_the_cli_and_analysis_imports_no_torch():
    code = ("import sys, pocovid.cli, pocovid.analysis, pocovid.inference, pocovid.models.runtime; "
            "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_load_records_the_file_hash(model_file):
    import hashlib

    assert load(model_file).file_sha256 == hashlib.sha256(model_file.read_bytes()).hexdigest()


def test_array_refuses_what_tensor_refuses():
    from pocovid.models.preprocess import InputConfig

    cfg = InputConfig()
    for bad in (np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8, 4), np.uint8), np.zeros(8, np.uint8)):
        with pytest.raises(ValueError):
            cfg.array(bad)
        with pytest.raises(ValueError):
            cfg.tensor(bad)
    assert cfg.array(np.zeros((8, 8), np.uint8)).shape == (1, 3, 8, 8)


def test_ray_workers_get_the_graph_and_run_without_torch(clip, model_file, tmp_path, monkeypatch):
    """A cluster node's worker has no cache: it is sent the graph's bytes, writes them into its own
    cache, runs them on the same runtime as the caller, and imports no torch."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'pocovid[ray]')")
    from pocovid.analysis import analyze_files
    from pocovid.models.runtime import get_runtime

    monkeypatch.setenv("POCOVID_CACHE_DIR", str(tmp_path / "cache"))
    get_runtime(load(model_file), "onnx")  # a first run: the graph exported and the file described
    cfg = AnalysisConfig(runtime="onnx", rate_hz=4, report=False, key_frames=1)
    g, _ = resolve_model(str(model_file), cfg)
    assert isinstance(g, GraphModel)
    local = analyze_files([clip], g, tmp_path / "local", cfg)
    node = tmp_path / "node"  # the workers' cache: another machine's
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="warning",
             runtime_env={"env_vars": {"POCOVID_CACHE_DIR": str(node), "OMP_NUM_THREADS": "1"}})
    try:
        distributed = analyze_files([clip], str(model_file), tmp_path / "ray", cfg, engine="ray")

        def worker_state():
            from pocovid.analysis import ray_engine

            return len(ray_engine._MODELS), "torch" in sys.modules

        # the one worker (1 CPU) that ran the analysis: it kept the model, and never imported torch
        state = ray.get(ray.remote(num_cpus=1)(worker_state).remote())
    finally:
        ray.shutdown()
    assert not distributed.failures, distributed.failures
    assert state == (1, False)
    assert [p.name for p in (node / "graphs").glob("*.onnx")] == [g.graph.name]
    a, b = (json.loads((r.entries[0].folder / "result.json").read_text()) for r in (local, distributed))
    assert b["model_info"]["runtime"] == "onnx"
    for k in _VARYING:
        a.pop(k), b.pop(k)
    assert a == b
