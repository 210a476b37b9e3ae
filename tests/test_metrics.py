"""Metrics, clip aggregation, fold summaries and evaluation outputs (pocovid.evaluation)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef

from pocovid.evaluation import (
    aggregate_frames,
    classification_metrics,
    clip_predictions,
    evaluation_result,
    fold_summary,
    format_summary,
    frame_metrics,
    video_metrics,
    write_evaluation,
)

LABELS = ["covid", "pneumonia", "regular"]


def onehotish(pred, n_classes=3, top=0.8):
    """Probabilities whose argmax is `pred`: `top` there, the rest shared equally."""
    pred = np.asarray(pred)
    p = np.full((len(pred), n_classes), (1 - top) / (n_classes - 1))
    p[np.arange(len(pred)), pred] = top
    return p


def no_nan(obj):
    """json.dumps refuses NaN / inf: the result is strict JSON."""
    return json.loads(json.dumps(obj, allow_nan=False))


# ------------------------------------------------------------------------ classification metrics

def test_hand_computed_example():
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 1, 0, 2, 2, 2]
    m = classification_metrics(np.array(y_true), onehotish(y_pred), LABELS)
    # by hand: rows = true, cols = predicted
    assert m["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 0, 3]]
    assert m["labels"] == LABELS and m["n"] == 10
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["balanced_accuracy"] == pytest.approx((2 / 4 + 2 / 3 + 3 / 3) / 3)
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y_true, y_pred))
    pc = m["per_class"]
    # covid: TP 2, FN 2, FP 1, TN 5
    assert pc["covid"]["sensitivity"] == pytest.approx(2 / 4)
    assert pc["covid"]["specificity"] == pytest.approx(5 / 6)
    assert pc["covid"]["precision"] == pytest.approx(2 / 3)
    assert pc["covid"]["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    assert pc["covid"]["support"] == 4
    # pneumonia: TP 2, FN 1, FP 1, TN 6
    assert pc["pneumonia"]["sensitivity"] == pytest.approx(2 / 3)
    assert pc["pneumonia"]["specificity"] == pytest.approx(6 / 7)
    assert pc["pneumonia"]["precision"] == pytest.approx(2 / 3)
    # regular: TP 3, FN 0, FP 1, TN 6
    assert pc["regular"]["sensitivity"] == pytest.approx(1.0)
    assert pc["regular"]["specificity"] == pytest.approx(6 / 7)
    assert pc["regular"]["precision"] == pytest.approx(3 / 4)
    assert pc["regular"]["f1"] == pytest.approx(6 / 7)
    # normalised views: rows sum to 1 (recall), columns sum to 1 (precision, as in the paper)
    row = np.array(m["confusion_matrix_row_normalized"])
    col = np.array(m["confusion_matrix_col_normalized"])
    np.testing.assert_allclose(row.sum(axis=1), 1.0)
    np.testing.assert_allclose(col.sum(axis=0), 1.0)
    np.testing.assert_allclose(np.diag(row), [0.5, 2 / 3, 1.0])
    np.testing.assert_allclose(np.diag(col), [2 / 3, 2 / 3, 3 / 4])
    no_nan(m)


def test_perfect_predictions():
    y = np.array([0, 1, 2, 2, 1, 0, 2])
    p = np.eye(3)[y]
    m = classification_metrics(y, p, LABELS)
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["mcc"] == pytest.approx(1.0)
    assert m["macro_auc"] == 1.0
    for c in LABELS:
        assert m["per_class"][c] | {"support": 0, "predicted": 0} == {
            "sensitivity": 1.0, "specificity": 1.0, "precision": 1.0, "f1": 1.0, "auc": 1.0,
            "support": 0, "predicted": 0}
    assert m["ece"] == pytest.approx(0.0)


def test_random_predictions_near_chance():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 3000)
    p = rng.dirichlet([1, 1, 1], 3000)
    m = classification_metrics(y, p, LABELS)
    assert m["accuracy"] == pytest.approx(1 / 3, abs=0.04)
    assert abs(m["mcc"]) < 0.05
    assert m["macro_auc"] == pytest.approx(0.5, abs=0.04)
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, p.argmax(1)))


def test_missing_class_gives_none_not_nan():
    # no "regular" in y_true, and nothing predicted as "pneumonia"
    y = np.array([0, 0, 1, 1, 0])
    p = onehotish([0, 2, 2, 0, 0])
    m = classification_metrics(y, p, LABELS)
    reg, pneu = m["per_class"]["regular"], m["per_class"]["pneumonia"]
    assert reg["sensitivity"] is None and reg["auc"] is None and reg["support"] == 0
    assert reg["specificity"] == pytest.approx(3 / 5)
    assert pneu["precision"] is None and pneu["sensitivity"] == 0.0
    assert m["confusion_matrix_row_normalized"][2] == [None, None, None]
    assert m["confusion_matrix_col_normalized"][0][1] is None
    assert m["macro_auc"] is not None  # mean over the classes that have an AUC
    text = json.dumps(m, allow_nan=False)
    assert "NaN" not in text


def test_single_class_and_empty_do_not_crash():
    m = classification_metrics(np.zeros(4, dtype=int), onehotish([0, 0, 1, 0]), LABELS)
    assert all(pc["auc"] is None for pc in m["per_class"].values())
    assert m["macro_auc"] is None
    assert m["per_class"]["covid"]["specificity"] is None  # no negatives
    no_nan(m)
    e = classification_metrics(np.zeros(0, dtype=int), np.zeros((0, 3)), LABELS)
    assert e["n"] == 0 and e["accuracy"] is None and e["ece"] is None
    no_nan(e)


def test_string_labels_and_bad_input():
    m = classification_metrics(["covid", "regular"], onehotish([0, 2]), LABELS)
    assert m["accuracy"] == 1.0
    with pytest.raises(ValueError, match="unknown label"):
        classification_metrics(["covid", "flu"], onehotish([0, 2]), LABELS)
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 3], onehotish([0, 2]), LABELS)
    with pytest.raises(ValueError, match="columns"):
        classification_metrics([0, 1], np.ones((2, 4)) / 4, LABELS)


def test_ece_calibrated_and_overconfident():
    # bin 0.8: 10 predictions, 8 right; bin 0.6: 10 predictions, 6 right -> perfectly calibrated
    y = np.array([0] * 8 + [1] * 2 + [0] * 6 + [1] * 4)
    p = np.array([[0.8, 0.2]] * 10 + [[0.6, 0.4]] * 10)
    m = classification_metrics(y, p, ["a", "b"])
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)
    cal = m["calibration"]
    assert len(cal["bin_edges"]) == 11 and cal["bin_count"][8] == 10 and cal["bin_count"][6] == 10
    assert cal["bin_accuracy"][8] == pytest.approx(0.8) and cal["bin_confidence"][6] == pytest.approx(0.6)
    assert cal["bin_accuracy"][0] is None  # empty bin
    # confidence 0.95, half right -> ECE 0.45
    y = np.array([0, 1] * 10)
    p = np.array([[0.95, 0.05]] * 20)
    assert classification_metrics(y, p, ["a", "b"])["ece"] == pytest.approx(0.45)


# ---------------------------------------------------------------------------------- aggregation

def test_mean_and_vote_differ():
    # one confident frame for class 0, two lukewarm frames for class 1
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    ids = ["c"] * 3
    _, mean = aggregate_frames(p, ids, "mean")
    _, vote = aggregate_frames(p, ids, "vote")
    np.testing.assert_allclose(mean, [[1.7 / 3, 1.3 / 3]])
    assert mean.argmax() == 0 and vote.argmax() == 1
    np.testing.assert_allclose(vote, [[1 / 3, 2 / 3]], atol=1e-5)


def test_vote_tie_broken_by_mean_probability():
    p = np.array([[0.1, 0.9], [0.6, 0.4]])  # one vote each; mean favours class 1
    _, vote = aggregate_frames(p, ["x", "x"], "vote")
    assert vote.argmax() == 1
    np.testing.assert_allclose(vote.sum(axis=1), 1.0)


def test_logmean_and_max():
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    _, g = aggregate_frames(p, [1, 1], "logmean")
    np.testing.assert_allclose(g, [[0.75, 0.25]])  # sqrt(.45) : sqrt(.05) = 3 : 1
    _, mx = aggregate_frames(p, [1, 1], "max")
    np.testing.assert_allclose(mx, [[0.9 / 1.4, 0.5 / 1.4]])


def test_clip_order_and_unknown_method():
    p = onehotish([0, 1, 0, 2, 1])
    ids, agg = aggregate_frames(p, ["b", "a", "b", "c", "a"], "mean")
    assert ids.tolist() == ["b", "a", "c"]
    assert agg.argmax(axis=1).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="mean, vote, logmean, max"):
        aggregate_frames(p, list("babca"), "median")
    with pytest.raises(ValueError, match="clip ids"):
        aggregate_frames(p, ["a"], "mean")


def test_video_and_frame_metrics():
    # clip a (covid): 3 frames, 2 right; clip b (regular): 2 frames, both right
    y = [0, 0, 0, 2, 2]
    p = onehotish([0, 0, 1, 2, 2])
    ids = ["a", "a", "a", "b", "b"]
    v = video_metrics(y, p, ids, LABELS)
    f = frame_metrics(y, p, LABELS)
    assert v["n"] == 2 and v["accuracy"] == 1.0 and v["n_frames"] == 5
    assert f["n"] == 5 and f["accuracy"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="labelled"):
        video_metrics([0, 1, 0, 2, 2], p, ids, LABELS)


# ------------------------------------------------------------------------------------ folds

def test_fold_summary_mean_std():
    f1 = {"accuracy": 0.5, "mcc": 0.2, "labels": ["a", "b"],
          "per_class": {"a": {"auc": None, "sensitivity": 0.4}, "b": {"auc": 0.7}}}
    f2 = {"accuracy": 1.0, "mcc": float("nan"), "labels": ["a", "b"],
          "per_class": {"a": {"auc": 0.9, "sensitivity": 0.8}, "b": {"auc": 0.9}}}
    s = fold_summary([f1, f2])
    assert s["n_folds"] == 2
    assert s["accuracy"] == {"mean": 0.75, "std": 0.25, "values": [0.5, 1.0]}
    assert s["mcc"]["mean"] == 0.2 and s["mcc"]["std"] == 0.0 and s["mcc"]["values"] == [0.2, None]
    assert s["per_class"]["a"]["auc"]["mean"] == 0.9  # the None fold is skipped
    assert s["per_class"]["a"]["sensitivity"]["mean"] == pytest.approx(0.6)
    assert s["per_class"]["a"]["sensitivity"]["std"] == pytest.approx(0.2)
    assert s["per_class"]["b"]["auc"]["mean"] == pytest.approx(0.8)
    assert s["ece"] == {"mean": None, "std": None, "values": [None, None]}
    no_nan(s)


def _oof(seed=0, n_clips=12, n_folds=3):
    rng = np.random.default_rng(seed)
    y, p, ids, folds = [], [], [], []
    for c in range(n_clips):
        label = c % 3
        for _ in range(rng.integers(2, 6)):
            logits = rng.normal(size=3)
            logits[label] += 1.5
            y.append(label)
            p.append(np.exp(logits) / np.exp(logits).sum())
            ids.append(f"clip{c:02d}.mp4")
            folds.append(c % n_folds)
    return np.array(y), np.array(p), ids, folds


def test_evaluation_result_with_folds():
    y, p, ids, folds = _oof()
    r = evaluation_result(y, p, ids, LABELS, folds=folds, method="mean")
    no_nan(r)
    assert r["aggregation"] == "mean"
    assert r["video"]["n"] == 12 and r["frame"]["n"] == len(y)
    assert r["folds"]["ids"] == [0, 1, 2]
    assert len(r["folds"]["video"]["accuracy"]["values"]) == 3
    assert set(r["folds"]["frame"]["per_class"]) == set(LABELS)
    plain = evaluation_result(y, p, ids, LABELS)
    assert "folds" not in plain and plain["video"] == r["video"]
    bad = list(folds)
    bad[0] = 2 if bad[0] != 2 else 1  # first clip split over two folds
    with pytest.raises(ValueError, match="folds"):
        evaluation_result(y, p, ids, LABELS, folds=bad)


# ------------------------------------------------------------------------------------ outputs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_write_evaluation(tmp_path):
    y, p, ids, folds = _oof(seed=1)
    r = evaluation_result(y, p, ids, LABELS, folds=folds)
    rows = clip_predictions(y, p, ids, LABELS, extra={"fold": folds, "patient": [i[:6] for i in ids]})
    written = write_evaluation(tmp_path / "out", metrics=r, clip_table=rows, labels=LABELS,
                               skipped=["bad.mp4: cannot decode"])
    names = {"metrics.json", "predictions.csv", "confusion_video.png", "confusion_frame.png",
             "roc_video.png", "reliability_video.png"}
    assert {q.name for q in written.values()} == names
    for name in names:
        assert (tmp_path / "out" / name).stat().st_size > 0
    for key in ("confusion_video", "confusion_frame", "roc_video", "reliability_video"):
        data = written[key].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000

    body = json.loads((tmp_path / "out" / "metrics.json").read_text(), parse_constant=lambda c: 1 / 0)
    assert body["skipped"] == ["bad.mp4: cannot decode"]
    for level in ("video", "frame"):
        m = body[level]
        assert isinstance(m["n"], int)
        for k in ("accuracy", "balanced_accuracy", "mcc"):
            assert isinstance(m[k], float)
        for c in LABELS:
            assert set(m["per_class"][c]) >= {"sensitivity", "specificity", "precision", "f1", "auc"}
        assert m["labels"] == LABELS and len(m["confusion_matrix"]) == 3

    with open(tmp_path / "out" / "predictions.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 12
    assert list(table[0])[:6] == ["path", "label", "predicted", "p_covid", "p_pneumonia", "p_regular"]
    assert {"n_frames", "fold", "patient"} <= set(table[0])
    for row in table:
        probs = [float(row[f"p_{c}"]) for c in LABELS]
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-4)
        assert row["predicted"] == LABELS[int(np.argmax(probs))]
    assert table[0]["path"] == "clip00.mp4" and table[0]["label"] == "covid"


def test_write_evaluation_without_plots_and_column_table(tmp_path):
    m = evaluation_result([0, 1], onehotish([0, 1]), ["a", "b"], LABELS)
    table = {"path": ["a", "b"], "label": [0, 1], "probs": [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]]}
    written = write_evaluation(tmp_path, metrics=m, clip_table=[dict(zip(table, v)) for v in zip(*table.values())],
                               labels=LABELS, plots=False)
    assert set(written) == {"metrics", "predictions"}
    text = (tmp_path / "predictions.csv").read_text().splitlines()
    assert text[0] == "path,label,predicted,p_covid,p_pneumonia,p_regular"
    assert text[2].startswith("b,pneumonia,pneumonia,0.1,0.8,")
    assert json.loads((tmp_path / "metrics.json").read_text())["skipped"] == []


def test_format_summary():
    y, p, ids, folds = _oof(seed=2)
    r = evaluation_result(y, p, ids, LABELS, folds=folds)
    text = format_summary(r)
    for word in ("clips", "frames", "accuracy", "MCC", "ECE", "covid", "sens", "AUC", "±"):
        assert word in text
    assert "±" not in format_summary(evaluation_result(y, p, ids, LABELS))
