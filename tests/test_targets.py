"""Findings, severity and exam metrics (pocovid.evaluation.targets), hand-computed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pocovid.evaluation import aggregate_exams, exam_metrics, exam_table, finding_metrics, severity_metrics

CLASSES = ["covid", "pneumonia", "regular"]
NAN = np.nan


def strict(obj):
    return json.loads(json.dumps(obj, allow_nan=False))


# ---------------------------------------------------------------------------------- findings

def test_finding_metrics_masks_unknown_and_counts_by_hand():
    y = np.array([[1, NAN], [0, 1], [1, 1], [0, NAN], [NAN, 0]])
    p = np.array([[.9, .2], [.6, .8], [.4, .7], [.1, .3], [.99, .1]])
    m = strict(finding_metrics(y, p, ["b_lines", "a_lines"]))
    b = m["b_lines"]  # rows 0-3 known: truth 1 0 1 0, predicted (>= .5) 1 1 0 0
    assert (b["n"], b["n_positive"], b["tp"], b["fp"], b["fn"], b["tn"]) == (4, 2, 1, 1, 1, 1)
    assert b["prevalence"] == 0.5 and b["sensitivity"] == 0.5 and b["specificity"] == 0.5
    assert b["precision"] == 0.5 and b["f1"] == 0.5 and b["threshold"] == 0.5
    # AUC: pairs (pos .9, .4) x (neg .6, .1): .9>.6, .9>.1, .4<.6, .4>.1 -> 3/4
    assert b["auc"] == pytest.approx(0.75)
    a = m["a_lines"]  # rows 1, 2, 4 known: truth 1 1 0, predicted 1 1 0
    assert a["n"] == 3 and a["sensitivity"] == 1.0 and a["specificity"] == 1.0 and a["auc"] == 1.0


def test_finding_metrics_single_class_and_never_known():
    y = np.array([[1, NAN], [1, NAN], [1, NAN]])
    p = np.array([[.9, .5], [.2, .5], [.7, .5]])
    m = strict(finding_metrics(y, p, ["b_lines", "effusion"], threshold=0.8))
    b = m["b_lines"]
    assert b["auc"] is None and b["specificity"] is None and b["balanced_accuracy"] is None
    assert b["sensitivity"] == pytest.approx(1 / 3) and b["threshold"] == 0.8
    e = m["effusion"]
    assert e["n"] == 0 and e["sensitivity"] is None and e["f1"] is None and e["auc"] is None


def test_finding_metrics_checks_its_input():
    with pytest.raises(ValueError, match="names"):
        finding_metrics(np.zeros((2, 2)), np.zeros((2, 2)), ["one"])
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        finding_metrics(np.array([[2.0]]), np.array([[0.5]]), ["b_lines"])


# ---------------------------------------------------------------------------------- severity

def test_severity_kappa_on_a_known_confusion():
    y = np.array([0, 1, 2, 3, NAN])
    prob = np.eye(4)[[0, 1, 3, 3, 0]]
    m = strict(severity_metrics(y, prob))
    assert m["n"] == 4
    assert m["confusion_matrix"] == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]]
    # quadratic weights (i-j)^2/9; observed 1/36, expected 1/3 (hand-computed margins) -> 1 - 1/12
    assert m["kappa"] == pytest.approx(11 / 12)
    assert m["kappa_argmax"] == m["kappa_expected"] == pytest.approx(11 / 12)  # one-hot: every decoding agrees
    assert m["accuracy"] == m["accuracy_argmax"] == 0.75 and m["mae"] == m["mae_argmax"] == 0.25
    assert m["mae_expected"] == 0.25 and m["confusion_matrix_argmax"] == m["confusion_matrix"]
    assert m["support"] == [1, 1, 1, 1] and m["predicted"] == m["predicted_argmax"] == [1, 1, 0, 2]


def test_severity_median_decoding_of_a_weak_ordinal_head():
    """A weak cumulative-logit (CORAL) head, thresholds 1 apart and a score that rises a little with
    the true level: its argmax only ever says 0 or 3 (the middle levels never win), its median
    (P(y > k) > 0.5 counted, the head's own rule) follows the truth's order. The headline kappa,
    accuracy, MAE and confusion matrix are the median's; the argmax's are kept as *_argmax.
    COVID-BLUES out of fold (runs/mt_k5_wlnone): argmax 152 x 0 and 32 x 3 of 184 videos, kappa
    0.019; median 0.128."""
    y = np.repeat([0, 1, 2, 3], 5).astype(float)
    z = 0.4 * (y - 1.5) + np.tile(np.linspace(-.05, .05, 5), 4)
    above = 1 / (1 + np.exp(-(z[:, None] + np.array([1.0, 0.0, -1.0]))))  # P(y > k), k = 0, 1, 2
    prob = np.concatenate([np.ones((20, 1)), above], 1) - np.concatenate([above, np.zeros((20, 1))], 1)
    m = strict(severity_metrics(y, prob))
    assert m["predicted_argmax"] == [10, 0, 0, 10]  # argmax: the middle levels never win
    assert m["predicted"] == [0, 10, 10, 0]
    assert m["predicted"] == np.bincount((above > 0.5).sum(1), minlength=4).tolist()  # CORAL's rule
    assert m["confusion_matrix"] == [[0, 5, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0], [0, 0, 5, 0]]
    # median: 0 -> 1, 1 -> 1, 2 -> 2, 3 -> 2; observed weighted disagreement 2 * 1/4 * 1/9 = 1/18,
    # by chance 1/4 * 1/2 * (5 + 1 + 1 + 5)/9 = 1/6 -> kappa 1 - 1/3
    assert m["kappa"] == pytest.approx(2 / 3) and m["kappa_argmax"] is not None
    assert m["accuracy"] == 0.5 and m["mae"] == 0.5
    # ties: a cumulative probability of exactly 0.5 is the lower median
    tie = severity_metrics(np.array([0.0, 3.0]), np.array([[.5, .5, 0, 0], [0, 0, .5, .5]]))
    assert tie["predicted"] == [1, 0, 1, 0]


def test_severity_level_is_the_median_level_for_one_clip_or_many():
    from pocovid.models.outputs import severity_level

    assert severity_level([.4, .05, .05, .5]) == 2  # argmax 3: the cumulative reaches 0.5 at level 2
    assert severity_level(np.array([.45, .1, .05, .4])) == 1 and isinstance(severity_level([1, 0, 0, 0]), int)
    assert severity_level([.5, .5, 0, 0]) == 0  # exactly 0.5: the lower level
    assert severity_level([2.0, 1.0, 1.0, 4.0]) == 2  # normalised first: 0.25, 0.125, 0.125, 0.5
    assert severity_level([0, 0, 0, 0]) == 1  # no probability at all: uniform, the lower median
    rows = np.array([[.7, .1, .1, .1], [.1, .3, .3, .3], [.1, .1, .2, .6], [.25, .25, .25, .25]])
    out = severity_level(rows)
    assert out.tolist() == [0, 2, 3, 1] and out.dtype.kind == "i"
    assert severity_level(rows[None]).shape == (1, 4)  # any leading shape
    with pytest.raises(ValueError):
        severity_level(np.zeros((3, 0)))


def test_severity_expected_value_and_undefined_kappa():
    # expected severity 1.5 -> rounds to 2 (numpy rounds half to even); argmax 1 (first of the tie);
    # median 1 (the cumulative is exactly 0.5 at level 1)
    prob = np.array([[0, .5, .5, 0], [0, .5, .5, 0]])
    m = severity_metrics(np.array([2.0, 2.0]), prob)
    assert m["accuracy"] == m["accuracy_argmax"] == 0.0 and m["mae_expected"] == pytest.approx(0.5)
    assert m["kappa"] is None or m["kappa"] == pytest.approx(0.0)  # one true level: no agreement by chance
    empty = strict(severity_metrics(np.array([NAN]), np.full((1, 4), .25)))
    assert empty["n"] == 0 and empty["kappa"] is None and empty["confusion_matrix"] == [[0] * 4] * 4
    assert empty["kappa_argmax"] is None and set(empty) == set(m)  # the same keys either way
    with pytest.raises(ValueError):
        severity_metrics(np.array([0.0]), np.zeros((1, 3)))


# -------------------------------------------------------------------------------------- exams

EXAMS = np.array(["a", "a", "b", "c", "c"])
CLIP_P = np.array([[.7, .2, .1], [.1, .1, .8],   # exam a: one COVID-looking zone, one normal
                   [.2, .6, .2],                  # exam b
                   [.3, .2, .5], [.3, .2, .5]])   # exam c


def test_exam_aggregation_methods():
    ids, p, n = aggregate_exams(EXAMS, CLIP_P, CLASSES, "mean")
    assert ids.tolist() == ["a", "b", "c"] and n.tolist() == [2, 1, 2]
    assert p[0] == pytest.approx([.4, .15, .45])
    # the definitions of pocovid.models.exam, which `pocovid exam` uses: a disease scores its strongest
    # clip (max) or any clip (noisy-or), 'regular' its weakest (min) or all clips (product); normalised
    _, p, _ = aggregate_exams(EXAMS, CLIP_P, CLASSES, "max")
    assert p[0] == pytest.approx([.7, .2, .1], abs=1e-5)  # covid .7, pneumonia .2, regular min(.1, .8)
    _, p, _ = aggregate_exams(EXAMS, CLIP_P, CLASSES, "noisy_or")
    a = [1 - .3 * .9, 1 - .8 * .9, .1 * .8]  # .73, .28, .08
    c = [1 - .7 * .7, 1 - .8 * .8, .5 * .5]  # .51, .36, .25
    assert p[0] == pytest.approx(np.array(a) / sum(a), abs=1e-5)
    assert p[2] == pytest.approx(np.array(c) / sum(c), abs=1e-5)
    assert np.allclose(p.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="methods"):
        aggregate_exams(EXAMS, CLIP_P, CLASSES, "median")


def test_exam_metrics_by_hand():
    labels = {"a": "covid", "b": "pneumonia", "c": "other"}
    mean = strict(exam_metrics(EXAMS, CLIP_P, labels, CLASSES))
    # mean: a -> regular (.45), b -> pneumonia, c -> regular; 'other' is outside the 3 classes
    assert mean["n_exams"] == 3 and mean["n_labelled"] == 3 and mean["n_clips"] == 5
    cls = mean["classification"]
    assert cls["n"] == 2 and cls["confusion_matrix"] == [[0, 0, 1], [0, 1, 0], [0, 0, 0]]
    b = mean["covid_vs_rest"]  # truth a=1, b=0, c=0; nothing predicted covid
    assert (b["n"], b["n_positive"], b["sensitivity"], b["specificity"]) == (3, 1, 0.0, 1.0)
    assert b["accuracy"] == pytest.approx(2 / 3) and b["balanced_accuracy"] == 0.5
    assert b["auc"] == 1.0  # p_covid a .4 above b .2 and c .3
    mx = strict(exam_metrics(EXAMS, CLIP_P, labels, CLASSES, method="max"))["covid_vs_rest"]
    assert mx["sensitivity"] == 1.0 and mx["specificity"] == 1.0 and mx["accuracy"] == 1.0


def test_exam_table_rows():
    rows = exam_table(EXAMS, CLIP_P, {"a": 0, "b": "pneumonia"}, CLASSES, method="max",
                      extra={"patient": ["p1", "p1", "p2", "p3", "p3"], "dataset": ["x"] * 5})
    assert [r["exam"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["label"] == "covid" and rows[0]["predicted"] == "covid" and rows[0]["n_clips"] == 2
    assert rows[2]["label"] == "" and rows[2]["patient"] == "p3" and rows[2]["dataset"] == "x"
    assert rows[0]["p_covid"] == pytest.approx(.7)
    assert list(rows[0])[:7] == ["exam", "label", "predicted", "p_covid", "p_pneumonia", "p_regular", "n_clips"]
    with pytest.raises(ValueError, match="extra column"):
        exam_table(EXAMS, CLIP_P, {}, CLASSES, extra={"patient": ["p1"]})


# ------------------------------------------------------------------------------ pocovid evaluate

def test_evaluate_writes_exams_findings_and_severity(model_file, tmp_path, monkeypatch):
    """Exams always; findings / severity when the model's frame pass carries them (faked here on
    the phantom model's outputs, so the test holds before and after the multi-task heads land)."""
    import csv

    import pocovid.inference as inference
    from pocovid.evaluation import evaluate_folder
    from pocovid.phantom.blues import write_blues_dataset

    root = write_blues_dataset(tmp_path / "covid-blues", classes=("covid", "regular", "pneumonia", "other"),
                               zones=("L1", "R1"), repeats=0, width=48, height=48, n_frames=3)
    load, predict = inference.load, inference.predict_recording

    def load_with_heads(spec):
        m = load(spec)
        m.findings = ["b_lines", "a_lines", "effusion"]
        return m

    def predict_with_heads(model, path, *a, **k):
        rec = predict(model, path, *a, **k)
        n, m = rec.outputs.log_probs.shape[:2]
        b = "patient_1" in str(path) or "patient_3" in str(path)  # the phantom's B-line patients
        rec.outputs.findings = np.broadcast_to(np.array([.9 if b else .1, .2, .5]), (n, m, 3)).copy()
        rec.outputs.severity = np.broadcast_to(np.array([.1, .6, .2, .1]), (n, m, 4)).copy()
        return rec

    monkeypatch.setattr(inference, "load", load_with_heads)
    monkeypatch.setattr(inference, "predict_recording", predict_with_heads)
    m = evaluate_folder(model_file, root, tmp_path / "ev", progress=False, max_frames=2)
    strict(m)
    ex = m["exams"]
    assert ex["n_exams"] == 3 and ex["n_clips"] == 6 and ex["method"] == "mean"  # 'other' is skipped
    assert ex["covid_vs_rest"]["n"] == 3 and ex["covid_vs_rest"]["n_positive"] == 1
    rows = list(csv.DictReader(open(tmp_path / "ev" / "patients.csv", newline="")))
    assert [r["exam"] for r in rows] == ["pat1", "pat2", "pat3"]
    assert list(rows[0])[:5] == ["exam", "patient", "dataset", "label", "predicted"]
    assert [r["label"] for r in rows] == ["covid", "regular", "pneumonia"] and rows[0]["n_clips"] == "2"
    f = m["findings"]
    assert f["b_lines"]["n"] == 6 and f["effusion"]["n"] == 0 and f["effusion"]["auc"] is None
    assert m["severity"]["n"] == 6 and len(m["severity"]["confusion_matrix"]) == 4
    assert m["severity"]["predicted"] == [0, 6, 0, 0]
    preds = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv", newline="")))
    assert {"f_b_lines", "f_a_lines", "severity", "severity_expected"} <= set(preds[0])
    assert preds[0]["severity"] == "1" and float(preds[0]["severity_expected"]) == pytest.approx(1.3)


def test_evaluate_scores_the_exam_method_of_the_model_file(model_file, tmp_path, monkeypatch):
    """`pocovid evaluate` calls each exam as `pocovid exam` does: the model file's fitted combiner
    (here logistic_signs, reading the recordings' findings and severity), and says where it came from."""
    import csv
    from types import SimpleNamespace

    from pocovid import inference
    from pocovid.evaluation import evaluate_folder
    from pocovid.models.exam import exam_probabilities, fit_exam_combiner
    from pocovid.phantom.blues import write_blues_dataset

    root = write_blues_dataset(tmp_path / "covid-blues", width=48, height=48, n_frames=3)
    load, predict = inference.load, inference.predict_recording
    rng = np.random.default_rng(0)
    names = ["b_lines", "a_lines", "consolidation"]
    n = 60
    params = fit_exam_combiner(rng.dirichlet(np.ones(3), n), [f"e{i // 4}" for i in range(n)],
                               {f"e{e}": e % 3 for e in range(n // 4)}, CLASSES, findings=rng.uniform(0, 1, (n, 3)),
                               severity=rng.dirichlet(np.ones(4), n), finding_names=names)
    seen = {}

    def load_with_combiner(spec):
        m = load(spec)
        m.findings, m.severity_levels = names, 4
        m.meta = {**(m.meta or {}), "extra": {"exam": {"method": "logistic_signs", "params": params}}}
        return m

    def predict_with_heads(model, path, *a, **k):
        rec = predict(model, path, *a, **k)
        n_frames, m = rec.outputs.log_probs.shape[:2]
        f = rng.uniform(0.05, 0.95, 3)
        s = rng.dirichlet(np.ones(4))
        rec.outputs.findings = np.broadcast_to(f, (n_frames, m, 3)).copy()
        rec.outputs.severity = np.broadcast_to(s, (n_frames, m, 4)).copy()
        seen[str(path)] = SimpleNamespace(f=f, s=s)
        return rec

    monkeypatch.setattr(inference, "load", load_with_combiner)
    monkeypatch.setattr(inference, "predict_recording", predict_with_heads)
    m = evaluate_folder(model_file, root, tmp_path / "ev", progress=False, max_frames=2)
    ex = m["exams"]
    assert ex["method"] == "logistic_signs" and ex["method_source"].startswith("model file")
    rows = list(csv.DictReader(open(tmp_path / "ev" / "patients.csv", newline="")))
    preds = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv", newline="")))
    for row in rows:  # each patient's probabilities: the combiner on its recordings' outputs
        mine = [r for r in preds if r["patient"] == row["patient"]]
        clip_p = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in mine])
        sign = [next(v for k, v in seen.items() if k.endswith(r["path"])) for r in mine]
        _, want = exam_probabilities(clip_p, ["x"] * len(mine), "logistic_signs", classes=CLASSES, params=params,
                                     findings=np.array([x.f for x in sign]), severity=np.array([x.s for x in sign]))
        assert [float(row[f"p_{c}"]) for c in CLASSES] == pytest.approx(want[0], abs=1e-3)


def test_evaluate_without_target_heads_has_no_target_blocks(model_file, tmp_path):
    from pocovid.evaluation import evaluate_folder, format_summary
    from pocovid.phantom.blues import write_blues_dataset

    root = write_blues_dataset(tmp_path / "covid-blues", classes=("covid", "regular"), zones=("L1",),
                               width=48, height=48, n_frames=3)
    m = evaluate_folder(model_file, root, tmp_path / "ev", progress=False, max_frames=2)
    assert "findings" not in m and "severity" not in m and m["exams"]["n_exams"] == 2
    assert (tmp_path / "ev" / "patients.csv").is_file()
    assert "COVID-19 vs not" in format_summary(m)


# ------------------------------------------------------------------ benchmarks/cross_site.py

def _benchmark(name: str, monkeypatch):
    """benchmarks/NAME.py as a module (the benchmarks are scripts, not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def cs(monkeypatch):
    """benchmarks/cross_site.py as a module."""
    return _benchmark("cross_site", monkeypatch)


def _fake_run(path, dataset_of_clip, labels, folds, probs, mode=None, targets=True):
    """A run folder as `pocovid train` writes it (config.json, cv/oof_members.npz, cv/oof_targets.npz,
    cache/frames-*.npz + trunk-*.npy, run.json), two frames per clip, one member."""
    n = len(labels)
    clip_of = np.repeat(np.arange(n), 2)
    clips = [{"path": f"/d/{ds}/c{i}.mp4", "rel": f"c{i}.mp4", "label": lab, "patient": f"{ds}:p{i // 2}",
              "fold": int(f), "probe": "convex", "dataset": ds, "n_frames": 2}
             for i, (ds, lab, f) in enumerate(zip(dataset_of_clip, labels, folds))]
    (path / "cv").mkdir(parents=True)
    (path / "cache").mkdir()
    cfg = {"config": {"probe": "convex"}, **({"split_mode": mode} if mode else {})}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "run.json").write_text(json.dumps({"timings": {"total_s": 90.0, "peak_memory_gb": 2.0}}))
    members = np.asarray(probs, float)[clip_of][:, None, :]
    np.savez(path / "cv" / "oof_members.npz", members=members, clip_of=clip_of, y=np.zeros(2 * n),
             classes=np.array(CLASSES), paths=np.array([c["path"] for c in clips]), folds=np.array(folds))
    np.savez(path / "cache" / "frames-a.npz", frames=np.zeros((2 * n, 4, 4), np.uint8), clip_of=clip_of,
             time_s=np.zeros(2 * n), clips=json.dumps(clips), classes=json.dumps(CLASSES), failures="[]")
    rng = np.random.default_rng(0)
    y = np.array([CLASSES.index(lab) if lab in CLASSES else 0 for lab in labels])[clip_of]
    feats = rng.normal(0, .1, (1, 2 * n, 3, 2, 2)) + np.eye(3)[y][None, :, :, None, None]  # separable
    np.save(path / "cache" / "trunk-a.npy", feats.astype(np.float16))
    if targets:
        sev = np.array([2.0 if lab == "covid" else 0.0 for lab in labels])
        b = (sev > 0).astype(float)
        np.savez(path / "cv" / "oof_targets.npz", clip_of=clip_of, finding_names=np.array(["b_lines"]),
                 findings=b[clip_of][:, None, None] * .8 + .1, severity=np.eye(4)[sev.astype(int)][clip_of][:, None],
                 truth_findings=b[:, None], truth_severity=sev, dataset=np.array(dataset_of_clip),
                 exam=np.array([c["patient"] for c in clips]), label=np.array(labels))
    return path


def test_cross_site_prints_every_row(tmp_path, capsys, cs):
    ds = ["pocus"] * 6 + ["covid-blues"] * 4
    labels = ["covid", "covid", "pneumonia", "pneumonia", "regular", "regular", "covid", "covid", "regular", "regular"]
    right = np.eye(3)[[CLASSES.index(x) for x in labels]] * .7 + .1
    wrong_blues = right.copy()
    wrong_blues[6:] = [.1, .1, .8]  # trained on POCUS only: no BLUES patient called COVID
    k = _fake_run(tmp_path / "k", ds, labels, [0, 1, 0, 1, 0, 1, 0, 0, 1, 1], right)
    lodo = _fake_run(tmp_path / "l", ds, labels, [0] * 6 + [1] * 4, wrong_blues, mode="lodo", targets=False)
    assert cs.main([f"m={k}", f"m={lodo}"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    assert "m frozen+LR" in out
    assert "1.000 / 1.000 / 1.000" in rows["POCUS k-fold convex clips: BA / COVID sens / spec"]
    assert "1.000 / 1.000" in rows["BLUES k-fold patients COVID-19 vs not: acc / AUC"]
    lodo_row = rows["LODO POCUS -> BLUES patients: COVID AUC"].split()
    assert lodo_row[-2] == "0.500"  # the model: every BLUES patient at p_covid .1
    assert "—" in rows["LOSO POCUS convex clips: BA / sens / spec"]
    sev = rows["BLUES severity per video: weighted kappa, median / argmax"].split()
    assert sev[-6:-3] == ["1.000", "/", "1.000"] and sev[-2] == "/"  # the model, then the baseline
    assert rows["BLUES B-lines per video: F1"].split()[-2] == "1.000"
    assert "1.5 min / 2.00 GB" in rows["kfold run: wall / peak memory"]


def test_cross_site_reads_a_run_whose_cache_is_gone(tmp_path, capsys, cs):
    """Without the cache, clips come from predictions.csv, which lists only the scored clips: the
    labels of the rest come from oof_targets.npz, so the BLUES patient row is the same."""
    import csv
    import shutil

    ds = ["pocus"] * 6 + ["covid-blues"] * 4
    labels = ["covid", "covid", "pneumonia", "pneumonia", "regular", "regular", "covid", "covid", "regular", "regular"]
    right = np.eye(3)[[CLASSES.index(x) for x in labels]] * .7 + .1
    k = _fake_run(tmp_path / "k", ds, labels, [0, 1, 0, 1, 0, 1, 0, 0, 1, 1], right)
    shutil.rmtree(k / "cache")
    with open(k / "cv" / "predictions.csv", "w", newline="") as f:  # the BLUES clips not scored: absent
        w = csv.DictWriter(f, ["path", "label", "patient", "fold"])
        w.writeheader()
        for i in range(6):
            w.writerow({"path": f"/d/pocus/c{i}.mp4", "label": labels[i], "patient": f"pocus:p{i // 2}",
                        "fold": i % 2})
    assert cs.main([f"m={k}", "--no-baseline"]) == 0
    rows = {line.split("  ")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "1.000 / 1.000" in rows["BLUES k-fold patients COVID-19 vs not: acc / AUC"]


def test_cross_site_baseline_of_a_fine_tuning_run_probes_the_frozen_trunk(tmp_path, capsys, cs):
    """A run that fine-tunes late stages caches earlier-stage maps: its baseline is the fully frozen
    trunk's features (the cache file of its config with every stage frozen), or none, never its own maps."""
    from dataclasses import replace

    from pocovid.training.config import TrainConfig
    from pocovid.training.cv import trunk_cache_name

    ds = ["pocus"] * 6 + ["covid-blues"] * 4
    labels = ["covid", "covid", "pneumonia", "pneumonia", "regular", "regular", "covid", "covid", "regular", "regular"]
    right = np.eye(3)[[CLASSES.index(x) for x in labels]] * .7 + .1
    k = _fake_run(tmp_path / "k", ds, labels, [0, 1, 0, 1, 0, 1, 0, 0, 1, 1], right)
    cfg = TrainConfig(n_frozen=4)
    (k / "config.json").write_text(json.dumps({"config": cfg.to_dict()}))
    assert cs.load_run(f"ft={k}").trunk_file is None  # trunk-a.npy: this run's own (stage-4) maps
    assert cs.main([f"ft={k}"]) == 0
    assert "no cached features of the frozen trunk: no baseline" in capsys.readouterr().out
    frozen = k / "cache" / trunk_cache_name(replace(cfg, n_frozen=None), "a")
    (k / "cache" / "trunk-a.npy").rename(frozen)
    assert cs.load_run(f"ft={k}").trunk_file == frozen
    assert cs.main([f"ft={k}"]) == 0
    assert "ft frozen+LR" in capsys.readouterr().out


def test_cross_site_learned_exam_combiner_scores_every_blues_patient_out_of_fold(tmp_path, capsys, cs):
    """--exam-method logistic_signs: the combiner is fitted on the other folds' labelled exams and
    applied to every exam of the fold, so the all-patients row counts the `other` patients (not
    COVID-19) that the model's classes leave unlabelled; a run without findings gets none."""
    ds = ["pocus"] * 12 + ["covid-blues"] * 16
    labels = ["covid", "pneumonia", "regular"] * 4 + ["covid"] * 6 + ["regular"] * 4 + ["other"] * 6
    # the clip outputs are uninformative on BLUES; the B-lines / severity outputs tell COVID-19 apart
    probs = np.eye(3)[[CLASSES.index(x) if x in CLASSES else 2 for x in labels]] * .7 + .1
    probs[12:] = [.3, .2, .5]
    folds = [i % 2 for i in range(12)] + [(i // 2) % 2 for i in range(16)]
    k = _fake_run(tmp_path / "k", ds, labels, folds, probs)
    p = cs.load_run(f"m={k}").preds
    mean, signs = cs.blues_exams(p, "mean"), cs.blues_exams(p, "logistic_signs")
    assert mean["n"] == signs["n"] == 8  # 3 COVID-19, 2 regular, 3 other patients (2 clips each)
    assert mean["auc"] == 0.5 and signs["auc"] == 1.0
    assert cs.blues_exams(p, "logistic_signs", model_classes_only=True)["n"] == 5
    assert cs.main([f"m={k}", "--no-baseline", "--exam-method", "logistic_signs"]) == 0
    assert "logistic_signs combiner, fitted on the other folds' exams" in capsys.readouterr().out
    no_targets = _fake_run(tmp_path / "n", ds, labels, folds, probs, targets=False)
    assert cs.blues_exams(cs.load_run(f"m={no_targets}").preds, "logistic_signs") is None


def test_cross_site_wall_time_of_a_resumed_run_counts_every_call(cs):
    """`pocovid train ... --final` run again on finished folds keeps the first call's timings under
    `earlier`: the run's wall time is both calls', its peak memory the larger."""
    first = {"total_s": 600.0, "peak_memory_gb": 2.5}
    assert cs.wall_memory({"timings": first}) == "10.0 min / 2.50 GB"
    resumed = {"total_s": 300.0, "peak_memory_gb": 2.0, "earlier": first}
    assert cs.wall_memory({"timings": resumed}) == "15.0 min / 2.50 GB"
    assert cs.wall_memory({"timings": {"total_s": 60.0, "earlier": {"earlier": first}}}).startswith("— / ")
    assert cs.wall_memory({}) == "— / —"


# ------------------------------------------------------------------ benchmarks/severity_decoding.py

def test_findings_ceiling_maps_finding_combinations_to_levels_out_of_fold(monkeypatch):
    """The label ceiling of benchmarks/severity_decoding.py: where the findings fix the level, the
    mapping found on the other folds recovers it exactly; where they say nothing, it cannot."""
    sd = _benchmark("severity_decoding", monkeypatch)
    rng = np.random.default_rng(0)
    combo = rng.integers(0, 4, 200)  # two yes/no findings per video
    fold = np.arange(200) % 5
    y = np.array([2, 0, 3, 1])[combo]  # the level follows from the findings
    out_of_fold, in_sample = sd.findings_ceiling(combo, y, fold, 4)
    assert sd.qwk(y, out_of_fold) == 1.0 and sd.qwk(y, in_sample) == 1.0
    noise = rng.integers(0, 4, 200)  # the level has nothing to do with the findings
    out_of_fold, in_sample = sd.findings_ceiling(combo, noise, fold, 4)
    assert sd.qwk(noise, out_of_fold) < 0.2 and sd.qwk(noise, out_of_fold) <= sd.qwk(noise, in_sample)


def test_exam_methods_score_blues_patients_auc_and_accuracy(tmp_path, monkeypatch):
    """benchmarks/exam_methods.py: per method, the COVID-19 AUC and the COVID-19-vs-not accuracy of
    the COVID-BLUES exams only (POCUS exams do not count), over the patients of the model's classes
    and over all of them (an `other` patient, unlabelled for the model, counts as not COVID-19)."""
    em = _benchmark("exam_methods", monkeypatch)
    classes = ["covid", "pneumonia", "regular"]
    probs = {"covid-blues:1": [.6, .1, .3], "covid-blues:2": [.4, .1, .5], "covid-blues:3": [.5, .1, .4],
             "covid-blues:4": [.2, .1, .7], "covid-blues:5": [.7, .1, .2], "pocus:9": [.0, .0, 1.]}
    labels = {"covid-blues:1": 0, "covid-blues:2": 0, "covid-blues:3": 2, "covid-blues:4": 2, "pocus:9": 0}
    exam_p = {m: {e: np.array(p) for e, p in probs.items()} for m in em.EXAM_METHODS}
    monkeypatch.setattr(em, "exam_methods_of_run", lambda run: (None, exam_p, labels, classes))
    (tmp_path / "cv").mkdir()
    np.savez(tmp_path / "cv" / "oof_targets.npz", exam=np.array(list(probs)),
             label=np.array(["covid", "covid", "regular", "regular", "other", "covid"]))
    got = em.blues_scores_per_method(tmp_path)["mean"]
    # covid scores .6 .4 against .5 .2: 3 of 4 pairs ranked right; argmax covid: 1 right, 2 wrong, 3 wrong, 4 right
    assert got["classes"] == (0.75, 0.5, 4)
    # the `other` patient 5 scores .7, above both COVID-19 patients, and is called COVID-19: wrong
    assert got["all"] == (0.5, 0.4, 5)


def test_experts_reference_scores_the_experts_readings_per_patient(tmp_path, monkeypatch):
    """benchmarks/exam_methods.py's reference: per patient the sum of the experts' zone severities
    and the share of videos with B-lines, as COVID-19 scores; patients outside the model's classes
    count only in the second AUC."""
    em = _benchmark("exam_methods", monkeypatch)
    # four patients, two videos each: covid (severe, B-lines), regular (mild, none),
    # other (severe, B-lines: ranks with covid), covid (mild, B-lines)
    exam = np.repeat(["b:1", "b:2", "b:3", "b:4"], 2)
    label = np.repeat(["covid", "regular", "other", "covid"], 2)
    sev = np.array([3, 2, 0, 1, 3, 3, 2, 0], np.float32)
    find = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 0], [1, 0], [1, 0], [np.nan, 1]], np.float32)
    (tmp_path / "cv").mkdir()
    np.savez(tmp_path / "cv" / "oof_targets.npz", dataset=np.repeat("covid-blues", 8), exam=exam, label=label,
             truth_severity=sev, truth_findings=find, finding_names=np.array(["b_lines", "a_lines"]),
             classes=np.array(["covid", "pneumonia", "regular"]))
    ref = em.experts_reference(tmp_path)
    assert ref["LUS score"] == (1.0, 0.5)  # 5 and 2 vs 1; with `other`'s 6 above both covid patients
    assert ref["B-lines share"] == (1.0, 0.75)  # 1 and 1 vs 0; `other`'s 1 ties both
