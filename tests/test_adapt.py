"""Site adaptation (`pocovid adapt`): fits on synthetic logits, the adapted model file, analyze and
evaluate applying it, the command."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pocovid.cli import app
from pocovid.models.adaptation import adapt_clip_probs, adaptation_of, calibrate_probs
from pocovid.phantom.blues import write_blues_dataset
from pocovid.training.adapt import fit_calibration

runner = CliRunner()


def _sample(z: np.ndarray, rng) -> np.ndarray:
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return np.array([rng.choice(p.shape[1], p=row) for row in p])


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.0, (4000, 3))
    y = _sample(true_logits, rng)
    overconfident = true_logits * 2.5  # the model's logits: true / T with T = 0.4
    t, b = fit_calibration(overconfident, np.arange(len(y)), y, "temperature")
    assert t == pytest.approx(2.5, rel=0.08)
    assert np.allclose(b, 0)


def test_prior_shift_recovers_known_priors():
    rng = np.random.default_rng(1)
    train_prior, local_prior = np.array([1 / 3, 1 / 3, 1 / 3]), np.array([0.6, 0.1, 0.3])
    evidence = rng.normal(0, 1.5, (6000, 3))  # log p(x | y) up to a constant
    y = _sample(evidence + np.log(local_prior), rng)
    model_logits = evidence + np.log(train_prior)  # the model learnt the training prevalence
    t, b = fit_calibration(model_logits, np.arange(len(y)), y, "prior")
    assert t == 1.0
    want = np.log(local_prior / train_prior)
    assert np.allclose(b, want - want.mean(), atol=0.12)


def test_calibrate_probs_is_identity_without_change_and_adapt_clip_probs_without_adaptation():
    p = np.array([[0.2, 0.5, 0.3]])
    assert calibrate_probs(p) is not None and np.array_equal(calibrate_probs(p, 1.0, [0, 0, 0]), p)

    class M:
        classes = ["covid", "pneumonia", "regular"]
        meta = {"extra": {}}
    assert adapt_clip_probs(M(), p) is p and adaptation_of(M()) is None


@pytest.fixture(scope="module")
def local_blues(tmp_path_factory) -> Path:
    return write_blues_dataset(tmp_path_factory.mktemp("site") / "covid-blues",
                               classes=("covid", "covid", "regular", "regular", "pneumonia", "other"),
                               zones=("L1", "R1"), n_frames=3)


@pytest.fixture(scope="module")
def adapted(model_file, local_blues, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapted") / "adapted.pt"
    before = model_file.read_bytes()
    r = runner.invoke(app, ["adapt", str(local_blues), "--model", str(model_file), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "model written" in r.output
    assert model_file.read_bytes() == before  # the input model file is never touched
    return out


def test_adapted_model_file_carries_its_adaptation(adapted, model_file):
    from pocovid.inference import load

    m = load(adapted)
    a = adaptation_of(m)
    assert a["method"] == "calibrate" and a["level"] == "exam"  # BLUES labels are the patient's
    assert a["temperature"] > 0 and len(a["bias"]) == 3 and a["n_patients"] == 5  # 'other' is not fitted
    assert a["nll_after"] <= a["nll_before"] + 1e-6
    assert "feature_density" in m.meta["extra"]  # the rest of the metadata is kept
    assert adaptation_of(load(model_file)) is None


def test_analyze_and_evaluate_apply_the_adaptation(adapted, model_file, local_blues, tmp_path):
    from pocovid.analysis import analyze_recording
    from pocovid.evaluation import evaluate_folder
    from pocovid.inference import load, predict_recording

    clip = next((local_blues / "lus_videos").glob("patient_1_L1.mp4"))
    m = load(adapted)
    raw = predict_recording(m, clip).probs.mean(0)
    want = adapt_clip_probs(m, raw)
    res = analyze_recording(clip, str(adapted), tmp_path / "a")
    got = np.array(list(res.prediction.probabilities.values()))
    assert np.allclose(got, want, atol=2e-4) and "site-adapted" in res.prediction.aggregation
    plain = analyze_recording(clip, str(model_file), tmp_path / "b")
    assert np.allclose(list(plain.prediction.probabilities.values()), raw, atol=2e-4)

    metrics = evaluate_folder(str(adapted), local_blues, tmp_path / "ev", progress=False)
    assert metrics["adaptation"]["method"] == "calibrate"
    rows = (tmp_path / "ev" / "predictions.csv").read_text().splitlines()
    row = next(r for r in rows if "patient_1_L1.mp4" in r)
    assert f"{want[0]:.4f}"[:5] in row
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["adaptation"]["temperature"] == metrics["adaptation"]["temperature"]


def test_prior_and_heads_methods(model_file, local_blues):
    from pocovid.data import load_index
    from pocovid.inference import load
    from pocovid.training.adapt import adapt_model, adapted_clip_probs, local_outputs

    model = load(model_file)
    outs = local_outputs(model, load_index(local_blues), features=True)
    prior = adapt_model(model, outs, "prior", level="clip")
    assert adaptation_of(prior)["temperature"] == 1.0 and adaptation_of(prior)["level"] == "clip"
    heads = adapt_model(model, outs, "heads")
    a = adaptation_of(heads)
    assert a["temperature"] == 1.0 and a["nll_after"] <= a["nll_before"] + 1e-6
    w0, w1 = model.heads[0].fc.weight.detach(), heads.heads[0].fc.weight.detach()
    assert not np.allclose(w0.numpy(), w1.numpy()) and float((w1 - w0).abs().max()) < 1.0
    assert np.allclose(adapted_clip_probs(model, outs), outs.clip_probs(), atol=1e-5)  # no adaptation: raw


def test_adapt_command_errors_are_one_line(model_file, tmp_path):
    bad = tmp_path / "empty"
    bad.mkdir()
    for args in (["adapt", str(bad), "--model", str(model_file), "--out", str(tmp_path / "x.pt")],
                 ["adapt", str(tmp_path / "missing"), "--model", str(model_file), "--out", str(tmp_path / "x.pt")],
                 ["adapt", str(bad), "--model", str(model_file), "--out", str(model_file)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 1, r.output
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert not (tmp_path / "x.pt").exists()


def test_adaptation_curve_runs_on_phantom_data(model_file, local_blues, capsys):
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "adaptation_curve.py"
    spec = importlib.util.spec_from_file_location("adaptation_curve", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(model_file), str(local_blues), "--repeats", "2", "--ks", "0,2,all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[2:]] == ["0", "2", "all"]
