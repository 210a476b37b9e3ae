"""Multi-task heads (findings, ordinal severity), masked losses, weak labels, exam-level diagnosis and
the LUS score; a two-dataset phantom training run end to end whose model `analyze` uses."""

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pocovid.cli import app
from pocovid.data import Findings
from pocovid.models import OrdinalHead, create_model, load_model, save_model
from pocovid.models.exam import exam_probabilities, expected_severity, fit_exam_combiner, lus_score
from pocovid.models.model_file import FORMAT_VERSION
from pocovid.models.outputs import FrameOutput, severity_level
from pocovid.training import TrainConfig
from pocovid.training.config import ConfigError
from pocovid.training.fit import multitask_loss
from pocovid.training.supervision import FrameTargets, diagnosis_target

torch.set_num_threads(1)
runner = CliRunner()
FINDINGS = ["b_lines", "a_lines", "consolidation"]


def _model(**kw):
    torch.manual_seed(0)
    return create_model("efficientnet_lite0", ["covid", "pneumonia", "regular"], pretrained=False, n_heads=2,
                        adapter_channels=16, **kw).eval()


def _x(b=3, size=64):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_heads_give_findings_severity_and_finding_cams_in_one_pass():
    m = _model(findings=FINDINGS, severity_levels=4)
    x = _x()
    out = m.infer(x, finding_cams=True)
    assert out.findings.shape == (3, 2, 3) and out.severity.shape == (3, 2, 4)
    assert torch.all((out.findings >= 0) & (out.findings <= 1))
    assert torch.allclose(out.severity.sum(-1), torch.ones(3, 2), atol=1e-5)
    # the class outputs are those of forward_members; the finding CAMs are the findings fc on the last map
    assert torch.allclose(out.log_probs, torch.log_softmax(m.forward_members(x), -1), atol=1e-5)
    h = m.forward_trunk(x)
    want = torch.stack([torch.einsum("bkhw,fk->bfhw", hd.features(h), hd.findings.weight) for hd in m.heads]).mean(0)
    assert out.finding_cams.shape == (3, 3, *want.shape[2:]) and torch.allclose(out.finding_cams, want, atol=1e-5)
    assert m.infer(x).finding_cams is None  # only on demand
    plain = _model().infer(x)
    assert plain.findings is None and plain.severity is None and plain.finding_cams is None


def test_ordinal_head_keeps_levels_in_order():
    head = OrdinalHead(8, 4)
    with torch.no_grad():
        head.gaps.copy_(torch.tensor([-3.0, 2.0]))
        head.bias.fill_(1.5)
    logits = head(torch.randn(50, 8))
    gt = torch.sigmoid(logits)
    assert torch.all(gt[:, :-1] >= gt[:, 1:])  # P(y > k) never rises with k
    p = OrdinalHead.probabilities(logits)
    assert torch.all(p >= 0) and torch.allclose(p.sum(1), torch.ones(50), atol=1e-6)
    assert np.allclose(expected_severity(p.detach().numpy()), gt.sum(1).detach().numpy(), atol=1e-5)
    # the level is the head's own decoding: the number of thresholds with P(y > k) > 0.5
    assert np.array_equal(severity_level(p.detach().numpy()), (gt > 0.5).sum(1).numpy())


def test_clip_severity_level_is_the_median_not_the_argmax():
    """A weak ordinal head (thresholds a logit apart, score near the middle): the argmax says 0, the
    median 1; `analyze` (Severity.level), hence the exam's zones and LUS score, take the median."""
    from pocovid.analysis.analyze import clip_targets

    gt = 1 / (1 + np.exp(-np.array([0.2, -0.8, -1.8])))  # P(y > k), k = 0, 1, 2
    p = np.concatenate([[1.0], gt]) - np.concatenate([gt, [0.0]])
    assert np.argmax(p) == 0 and severity_level(p) == 1 == int((gt > 0.5).sum())
    out = FrameOutput(log_probs=np.zeros((3, 2, 3)), pooled=np.zeros((3, 4)),
                      severity=np.broadcast_to(p, (3, 2, 4)).copy())
    sev = clip_targets(out, object())["severity"]
    assert sev.level == 1 and sev.probabilities == [round(float(v), 4) for v in p]


def test_model_file_round_trip_and_old_files_load(tmp_path):
    m = _model(findings=FINDINGS, severity_levels=4)
    save_model(m, tmp_path / "mt.pt", training_config={}, data_fingerprint="x")
    back = load_model(tmp_path / "mt.pt")
    assert back.findings == FINDINGS and back.severity_levels == 4
    x = _x()
    a, b = m.infer(x), back.infer(x)
    assert torch.allclose(a.findings, b.findings) and torch.allclose(a.severity, b.severity)
    # a format-1 file (no findings / severity_levels) loads as a diagnosis-only model
    plain = _model()
    save_model(plain, tmp_path / "v1.pt", training_config={}, data_fingerprint="x")
    obj = torch.load(tmp_path / "v1.pt", weights_only=True)
    assert obj["format_version"] == FORMAT_VERSION == 2
    obj["format_version"] = 1
    del obj["findings"], obj["severity_levels"]
    torch.save(obj, tmp_path / "v1.pt")
    old = load_model(tmp_path / "v1.pt")
    assert old.findings == [] and old.severity_levels == 0 and old.infer(x).findings is None
    assert torch.allclose(old.infer(x).log_probs, plain.infer(x).log_probs)


def _targets():
    y = np.array([0, 2, -1, 1, -1])
    f = np.array([[1, 0, np.nan], [0, 1, np.nan], [np.nan] * 3, [0, np.nan, np.nan], [np.nan] * 3], np.float32)
    s = np.array([2, 0, np.nan, 1, np.nan], np.float32)
    return FrameTargets(y, f, s)


def test_masked_losses_ignore_unknown_targets():
    m = _model(findings=FINDINGS, severity_levels=4)
    head = m.heads[0].eval()
    h = m.forward_trunk(_x(5))
    t = _targets()
    w = torch.ones(3)

    def loss(idx):
        head.zero_grad()
        out = head.forward_all(h[idx])
        loss = multitask_loss(out, t, idx, w, findings_weight=0.7, severity_weight=1.3)
        loss.backward()
        return float(loss.detach()), {k: v.grad.clone() for k, v in head.named_parameters() if v.grad is not None}

    full, g_full = loss(np.arange(5))
    known, g_known = loss(np.array([0, 1, 3]))  # frames 2 and 4 have nothing known
    assert full == pytest.approx(known, rel=1e-6)
    for k in g_known:
        assert torch.allclose(g_full[k], g_known[k], atol=1e-6), k
    # consolidation is unknown everywhere: its fc row learns nothing
    assert torch.all(g_full["findings.weight"][2] == 0) and g_full["findings.bias"][2] == 0
    assert g_full["findings.weight"][0].abs().sum() > 0
    # nothing known at all: zero loss, no gradient, no NaN
    nothing, _ = loss(np.array([2, 4]))
    assert nothing == 0.0


def test_weak_label_rule():
    classes = ["covid", "pneumonia", "regular"]
    normal, bl = Findings(severity=0, b_lines=False), Findings(severity=0, b_lines=True)
    sev = Findings(severity=2)
    unknown = Findings()
    rule = "abnormal_only"
    # a COVID-19 patient's normal-looking point teaches no diagnosis; a point with disease does
    assert diagnosis_target("covid", "patient", normal, classes, rule) == -1
    assert diagnosis_target("covid", "patient", unknown, classes, rule) == -1
    assert diagnosis_target("covid", "patient", bl, classes, rule) == 0
    assert diagnosis_target("pneumonia", "patient", sev, classes, rule) == 1
    # healthy patients' points are 'regular'; per-recording labels are kept; other classes never
    assert diagnosis_target("regular", "patient", sev, classes, rule) == 2
    assert diagnosis_target("covid", "recording", normal, classes, rule) == 0
    assert diagnosis_target("other", "patient", sev, classes, rule) == -1
    assert diagnosis_target("covid", "patient", normal, classes, "all") == 0
    assert diagnosis_target("covid", "patient", sev, classes, "none") == -1


def test_train_config_multitask_fields():
    cfg = TrainConfig.from_dict({"weak_labels": "all", "findings": ["b_lines"], "severity_levels": 0,
                                 "exam_method": "noisy_or", "findings_weight": 0.5})
    assert cfg.findings == ("b_lines",) and cfg.to_dict()["findings"] == ["b_lines"]
    for key, bad in (("weak_labels", "some"), ("findings", ["x_lines"]), ("severity_levels", 1),
                     ("exam_method", "vote"), ("outside_classes", "keep")):
        with pytest.raises(ConfigError, match=key):
            TrainConfig.from_dict({key: bad})


def test_exam_methods():
    classes = ["covid", "pneumonia", "regular"]
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]])
    ids = np.array(["b", "a", "b", "a"])
    got_ids, mean = exam_probabilities(p, ids, "mean", classes=classes)
    assert list(got_ids) == ["b", "a"]
    assert np.allclose(mean[0], [0.5, 0.15, 0.35]) and np.allclose(mean[1], [0.1, 0.1, 0.8])
    _, mx = exam_probabilities(p, ids, "max", classes=classes)
    assert np.allclose(mx[0], np.array([0.8, 0.2, 0.1]) / 1.1)  # disease: strongest clip; regular: weakest
    _, no = exam_probabilities(p, ids, "noisy_or", classes=classes)
    raw = np.array([1 - 0.2 * 0.8, 1 - 0.9 * 0.8, 0.1 * 0.6])
    assert np.allclose(no[0], raw / raw.sum())
    for q in (mean, mx, no):
        assert np.allclose(q.sum(1), 1)
    # logistic: fitted on clips of labelled exams, applied with its plain-data parameters
    rng = np.random.default_rng(0)
    labels, clips, exams = {}, [], []
    for e in range(30):
        k = e % 3
        labels[f"e{e}"] = k
        for _ in range(3):
            q = rng.dirichlet(np.ones(3))
            q = 0.5 * q + 0.5 * np.eye(3)[k]
            clips.append(q)
            exams.append(f"e{e}")
    params = fit_exam_combiner(np.array(clips), np.array(exams), labels, classes)
    json.dumps(params)  # plain data for the model file
    lid, lp = exam_probabilities(np.array(clips), np.array(exams), "logistic", classes=classes, params=params)
    assert np.mean(lp.argmax(1) == np.array([labels[e] for e in lid])) > 0.9
    with pytest.raises(ValueError, match="unknown exam method"):
        exam_probabilities(p, ids, "vote")


def test_logistic_signs_reads_findings_and_severity():
    """When the diagnosis head cannot tell exams apart but the severity can, only the signs method
    separates them; it refuses to run without the signs."""
    rng = np.random.default_rng(1)
    classes = ["covid", "pneumonia", "regular"]
    labels, clips, fnd, sev, exams = {}, [], [], [], []
    for e in range(40):
        k = 0 if e % 2 else 2
        labels[f"e{e}"] = k
        for _ in range(4):
            clips.append(rng.dirichlet(np.ones(3)))  # uninformative diagnosis
            b = rng.uniform(0.6, 0.95) if k == 0 else rng.uniform(0.05, 0.4)
            fnd.append([b, 1 - b])
            level = rng.integers(1, 4) if k == 0 else 0
            sev.append(np.eye(4)[level] * 0.8 + 0.05)
            exams.append(f"e{e}")
    clips, fnd, sev, exams = map(np.array, (clips, fnd, sev, exams))
    params = fit_exam_combiner(clips, exams, labels, classes, findings=fnd, severity=sev,
                               finding_names=["b_lines", "a_lines"])
    json.dumps(params)
    assert params["method"] == "logistic_signs" and "max_expected_severity" in params["features"]
    ids, p = exam_probabilities(clips, exams, "logistic_signs", classes=classes, params=params,
                                findings=fnd, severity=sev)
    assert np.mean(p.argmax(1) == np.array([labels[e] for e in ids])) > 0.9
    plain = fit_exam_combiner(clips, exams, labels, classes)
    _, q = exam_probabilities(clips, exams, "logistic", classes=classes, params=plain)
    assert np.mean(q.argmax(1) == np.array([labels[e] for e in ids])) < 0.8
    with pytest.raises(ValueError, match="needs the clips' findings and severity"):
        exam_probabilities(clips, exams, "logistic_signs", classes=classes, params=params)


def test_lus_score_sums_zone_severities():
    sev = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0.5, 0.5, 0]])
    ids, score = lus_score(sev, ["p1", "p1", "p1", "p2", "p2"], ["L1", "L2", "L2", "R1", "R2"])
    # p1: L1 = 2, L2 = mean(1, 3) = 2; p2: 0 + 1.5
    assert list(ids) == ["p1", "p2"] and np.allclose(score, [4.0, 1.5])


# ------------------------------------------------------------------ end to end, two datasets


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pocovid.phantom.blues import write_blues_dataset
    from pocovid.phantom.dataset import write_demo_dataset

    base = tmp_path_factory.mktemp("mt")
    pocus = write_demo_dataset(base / "pocus", n_patients_per_class=3, clips_per_patient=2, width=48, height=48,
                               n_frames=4)
    blues = write_blues_dataset(base / "covid-blues", classes=("covid",) * 4 + ("regular",) * 3 + ("other",) * 2,
                                zones=("L1", "R2"))
    splits = base / "s.json"
    r = runner.invoke(app, ["data", "split", str(pocus), str(blues), "--folds", "2", "--classes",
                            "covid,pneumonia,regular,other", "--out", str(splits)])
    assert r.exit_code == 0, r.output
    run = base / "run"
    r = runner.invoke(app, ["train", str(blues), str(pocus), "--splits", str(splits), "--out", str(run), "--size", "64",
                            "--heads", "2", "--epochs", "2", "--aug-copies", "0", "--max-frames", "2", "--batch-size",
                            "16", "--no-pretrained", "--quiet", "--val-fraction", "0", "--final"])
    assert r.exit_code == 0, r.output
    return run, r.output


def test_two_dataset_run_writes_out_of_fold_targets(trained):
    run, output = trained
    d = np.load(run / "cv" / "oof_targets.npz")
    names = list(d["finding_names"])
    n, n_clips = len(d["clip_of"]), len(d["paths"])
    assert d["findings"].shape == (n, 2, len(names)) and d["severity"].shape == (n, 2, 4)
    assert not np.isnan(d["findings"]).any() and np.allclose(d["severity"].sum(-1), 1, atol=1e-4)
    assert d["truth_findings"].shape == (n_clips, len(names)) and d["truth_severity"].shape == (n_clips,)
    ds = d["dataset"]
    # COVID-BLUES annotates only A-/B-lines: the rest is unknown (NaN), never 0
    blues = ds == "covid-blues"
    assert np.isnan(d["truth_findings"][blues][:, names.index("consolidation")]).all()
    assert not np.isnan(d["truth_findings"][blues][:, names.index("b_lines")]).any()
    # 'other' recordings are kept for findings and severity, with no diagnosis target
    other = d["label"] == "other"
    assert other.any() and (d["diagnosis_target"][other] == -1).all()
    assert not np.isnan(d["truth_severity"][other]).any()
    # weak labels `none` (the default): a patient's diagnosis is no COVID-BLUES recording's target
    assert (d["diagnosis_target"][blues] == -1).all() and (d["diagnosis_target"][~blues] >= 0).all()
    assert all(str(e).startswith(("covid-blues:", "pocus:")) for e in d["exam"])
    m = json.loads((run / "cv" / "metrics.json").read_text())
    assert set(m["findings"]) == set(names) and "kappa" in m["severity"]
    assert set(m["findings_by_dataset"]) == {"pocus", "covid-blues"}
    assert m["exams"]["method"] in ("mean", "max", "noisy_or", "logistic", "logistic_signs")
    assert set(m["exam_methods"]) == {"mean", "max", "noisy_or", "logistic", "logistic_signs"}
    rows = list(csv.DictReader(open(run / "cv" / "patients.csv", newline="")))
    assert rows and {"exam", "label", "predicted", "p_covid", "lus_score", "dataset"} <= set(rows[0])
    # every patient, those of no model class ('other') too, with their label
    assert {r["exam"] for r in rows} == set(d["exam"].astype(str))
    assert {r["exam"] for r in rows if r["label"] == "other"} == set(d["exam"][other].astype(str))
    assert m["exams"]["covid_vs_rest"]["n"] == len(rows)  # an 'other' patient counts as not COVID-19
    # predictions.csv scores only the trained classes
    preds = list(csv.DictReader(open(run / "cv" / "predictions.csv", newline="")))
    assert {r["label"] for r in preds} <= {"covid", "pneumonia", "regular"}
    info = json.loads((run / "run.json").read_text())
    assert info["targets"]["weak_labels"] == "none" and info["exam"]["method"] == m["exams"]["method"]
    assert info["precision"] in ("float32", "bfloat16")


def test_trained_model_shows_findings_and_severity_in_analyze(trained, tmp_path):
    from pocovid.analysis import analyze_recording
    from pocovid.phantom import write_phantom

    run, _ = trained
    model = load_model(run / "model.pt")
    assert model.findings and model.severity_levels == 4
    assert model.meta["extra"]["exam"]["method"] in ("mean", "max", "noisy_or", "logistic", "logistic_signs")
    write_phantom(tmp_path / "c.mp4", label="covid", n_frames=6, width=96, height=96, seed=2)
    res = analyze_recording(tmp_path / "c.mp4", model, tmp_path / "out")
    assert set(res.findings) == set(model.findings) and all(0 <= v <= 1 for v in res.findings.values())
    assert len(res.severity.probabilities) == 4 and 0 <= res.severity.expected <= 3
    assert res.severity.level == severity_level(res.severity.probabilities)  # the median level
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    from pocovid.analysis.result import SCHEMA_VERSION

    assert saved["schema_version"] == SCHEMA_VERSION >= 3 and saved["findings"] == res.findings
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Findings and severity" in html and "B-lines" in html and "Lung severity" in html
    assert "reach 50%" in html and "most likely severity" not in html
