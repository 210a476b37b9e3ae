"""COVID-BLUES read in its own layout, the findings vocabulary, several datasets at once, split modes."""

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pocovid.cli import app
from pocovid.data import (
    INDEX_COLUMNS,
    Findings,
    check_split,
    combine,
    index_dataset,
    load_index,
    load_splits,
    patient_folds,
    read_index,
    write_index,
)
from pocovid.data.blues import parse_video_name
from pocovid.data.findings import parse_severity, parse_yes_no
from pocovid.errors import PocovidError
from pocovid.phantom.blues import write_blues_dataset
from pocovid.phantom.dataset import write_demo_dataset

runner = CliRunner()
CLASSES = ("covid", "covid", "regular", "pneumonia", "other", "viral")


@pytest.fixture(scope="module")
def blues(tmp_path_factory) -> Path:
    return write_blues_dataset(tmp_path_factory.mktemp("blues") / "covid-blues", classes=CLASSES, repeats=1)


@pytest.fixture(scope="module")
def pocus(tmp_path_factory) -> Path:
    """A phantom POCUS folder whose patients come from 3 sources (Source ID 1, 2, 3 by patient)."""
    root = write_demo_dataset(tmp_path_factory.mktemp("pocus") / "pocus", n_patients_per_class=3,
                              clips_per_patient=2, width=48, height=48, n_frames=4)
    meta = root / "dataset_metadata.csv"
    rows = list(csv.DictReader(open(meta, newline="")))
    for r in rows:
        r["Source ID"] = 1 + (int(r["Patient ID / Name"]) - 1) % 3
    with open(meta, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def big_blues(tmp_path_factory) -> Path:
    """Enough COVID patients for 3 folds with COVID from both datasets in each."""
    return write_blues_dataset(tmp_path_factory.mktemp("bigblues") / "covid-blues",
                               classes=("covid",) * 4 + ("regular",) * 3 + ("other",) * 2, zones=("L1", "R2"))


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name))


def _rewrite(path: Path, edit) -> None:
    rows = list(csv.DictReader(open(path, newline="")))
    header = list(rows[0])
    rows = edit(rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)


# ------------------------------------------------------------------------------ findings vocabulary


def test_yes_no_and_severity_parsing_keep_unknown_unknown():
    values = ("1", "1.0", "yes", "Yes ", "true", "0", "0.0", "no")
    assert [parse_yes_no(v)[0] for v in values] == [True] * 5 + [False] * 3
    for v in ("", None, "nan", "n/a", "?"):
        assert parse_yes_no(v) == (None, True) and parse_severity(v) == (None, True)
    assert parse_yes_no("maybe") == (None, False) and parse_yes_no("2") == (None, False)
    assert parse_severity("2.0") == (2, True) and parse_severity("0") == (0, True)
    assert parse_severity("4") == (None, False) and parse_severity("1.5") == (None, False)
    f = Findings(b_lines=False, severity=0)
    assert f.known() == ["b_lines", "severity"] and f.a_lines is None
    assert f.to_row()["b_lines"] == "0" and f.to_row()["a_lines"] == "" and f.to_row()["severity"] == "0"
    assert Findings.from_row(f.to_row()) == f


def test_video_names():
    assert parse_video_name("patient_46_L1") == ("46", "L1", 1)
    assert parse_video_name("patient_3_R2_2") == ("3", "R2", 2)
    assert parse_video_name("Patient_07_r3") == ("7", "R3", 1)
    assert parse_video_name("patient_9_Q7") == ("9", "", 1)
    assert parse_video_name("clip1")[0] is None and parse_video_name("patient_x_L1")[0] is None


# ------------------------------------------------------------------------------ the reader


def test_blues_layout_is_read_natively(blues):
    idx = index_dataset(blues)
    assert idx.layout == "COVID-BLUES" and idx.dataset == "covid-blues"
    assert not idx.failures and not idx.skipped and not idx.warnings, (idx.failures, idx.warnings)
    assert len(idx) == len(CLASSES) * 3 + 1 and len(idx.patients()) == len(CLASSES)
    clinical = {r["patient_id"]: r for r in csv.DictReader(open(blues / "clinical_variables.csv", newline=""))}
    severity = {r["video_file"]: r for r in csv.DictReader(open(blues / "severity.csv", newline=""))}
    for it in idx:
        stem = it.name[:-4]
        pid = stem.split("_")[1]
        assert it.dataset == "covid-blues" and it.patient == f"pat{pid}" == it.exam
        assert it.label == CLASSES[int(pid) - 1] and it.label_scope == "patient" and it.label_from == "clinical"
        assert it.pcr is (clinical[pid]["cov_test"] == "1") and it.probe == "convex"
        assert it.zone == stem.split("_")[2] and it.license == "CC BY-NC-ND 4.0"
        f = it.findings
        assert f.severity == int(float(severity[stem]["Severity Score"]))
        assert f.b_lines is (severity[stem]["B-lines"].strip() == "yes")  # 'yes ' with a space is yes
        assert f.a_lines is (severity[stem]["A-lines"] == "yes")
        # what COVID-BLUES does not annotate stays unknown: never 0
        assert f.consolidation is None and f.effusion is None and f.pleural_irregularity is None
        assert f.air_bronchogram is None
    assert Counter(it.label for it in idx)["other"] == 3
    assert any(it.name == "patient_1_L1_2.mp4" and it.zone == "L1" for it in idx)
    text = idx.summary()
    assert "label is the PATIENT's clinical diagnosis" in text and "zones L1 7, R1 6, R2 6" in text
    exams = idx.exams()
    assert len(exams) == len(CLASSES) and exams[0]["label"] == "covid" and exams[0]["zones"] == ["L1", "R1", "R2"]


def test_blues_index_csv_round_trip(blues, tmp_path):
    idx = index_dataset(blues)
    p = write_index(idx, tmp_path / "index.csv")
    assert p.read_text().splitlines()[0].split(",") == INDEX_COLUMNS
    back = read_index(p)
    assert back.items == idx.items and back.dataset == "covid-blues" and back.root == idx.root


def test_blues_filters_and_other_class(blues):
    assert {it.label for it in index_dataset(blues, classes="covid,other")} == {"covid", "other"}
    assert len(index_dataset(blues, probes="linear")) == 0


def test_video_without_severity_row_has_unknown_findings(blues, tmp_path):
    root = _copy(blues, tmp_path)
    _rewrite(root / "severity.csv", lambda rows: [r for r in rows if r["video_file"] != "patient_2_R1"]
             + [{**rows[0], "video_file": "patient_99_L1"}])
    _rewrite(root / "severity.csv", lambda rows: [{**r, "Severity Score": "7"} if r["video_file"] == "patient_3_L1"
                                                  else r for r in rows])
    idx = index_dataset(root)
    it = next(i for i in idx if i.name == "patient_2_R1.mp4")
    assert it.findings == Findings() and it.severity is None  # unknown, not 0
    assert any("patient_2_R1.mp4: no row in severity.csv" in w for w in idx.warnings)
    assert any("severity.csv: 1 row(s) name no video" in w and "patient_99_l1" in w for w in idx.warnings)
    bad = next(i for i in idx if i.name == "patient_3_L1.mp4")
    assert bad.severity is None and bad.findings.b_lines is not None
    assert any("'Severity Score' is '7', not 0-3" in w for w in idx.warnings)
    assert not idx.failures


def test_patient_without_clinical_row_is_a_failure(blues, tmp_path):
    root = _copy(blues, tmp_path)
    _rewrite(root / "clinical_variables.csv", lambda rows: [r for r in rows if r["patient_id"] != "2"])
    _rewrite(root / "clinical_variables.csv", lambda rows: [
        {**r, "clin_diagn#healthy_lung": "1"} if r["patient_id"] == "4" else r for r in rows])  # two diagnoses
    idx = index_dataset(root)
    why = dict(idx.failures)
    assert why["lus_videos/patient_2_L1.mp4"] == "no label: patient 2 has no row in clinical_variables.csv"
    assert "several diagnoses (pneumonia, regular)" in why["lus_videos/patient_4_R1.mp4"]
    assert len(idx.failures) == 6 and len(idx) == len(CLASSES) * 3 + 1 - 6
    r = runner.invoke(app, ["data", "index", str(root)])
    assert r.exit_code == 0 and "failures (not indexed): 6" in r.output


def test_odd_names(blues, tmp_path):
    root = _copy(blues, tmp_path)
    v = root / "lus_videos"
    shutil.copy(v / "patient_1_L1.mp4", v / "clip1.mp4")
    shutil.copy(v / "patient_1_L1.mp4", v / "patient_1_Q7.mp4")
    (v / "notes.xyz").write_text("x")
    (v / "README.txt").write_text("x")
    idx = index_dataset(root)
    assert dict(idx.failures) == {"lus_videos/clip1.mp4": "no label: the name is not patient_<ID>_<POINT>[_2] "
                                                          "(COVID-BLUES layout)"}
    assert dict(idx.skipped) == {"lus_videos/notes.xyz": "unsupported file type '.xyz'"}
    odd = next(i for i in idx if i.name == "patient_1_Q7.mp4")
    assert odd.zone == "" and odd.label == "covid" and odd.findings == Findings()
    assert any("patient_1_Q7.mp4: no BLUE point" in w for w in idx.warnings)


@pytest.mark.parametrize("content", [None, "", "a,b\n1,2\n", b"\x00\xff\xfe binary \x00"])
def test_missing_or_malformed_clinical_csv(blues, tmp_path, content):
    root = _copy(blues, tmp_path)
    p = root / "clinical_variables.csv"
    if content is None:
        p.unlink()
    elif isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    idx = index_dataset(root)  # still recognised by lus_videos/; nothing can be labelled
    assert len(idx) == 0 and len(idx.failures) == len(CLASSES) * 3 + 1
    assert all(r.startswith("no label: ") for _, r in idx.failures)
    assert any(w.startswith("clinical_variables.csv: ") for w in idx.warnings)
    r = runner.invoke(app, ["data", "index", str(root)])
    assert r.exit_code == 1
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "nothing could be indexed" in err[0] and "Traceback" not in r.output


@pytest.mark.parametrize("content", [None, "video_file\n", "x,y\n1,2\n"])
def test_missing_or_malformed_severity_csv_indexes_without_findings(blues, tmp_path, content):
    root = _copy(blues, tmp_path)
    p = root / "severity.csv"
    if content is None:
        p.unlink()
    else:
        p.write_text(content)
    idx = index_dataset(root)
    assert len(idx) == len(CLASSES) * 3 + 1 and not idx.failures
    assert all(it.findings == Findings() for it in idx)
    assert any(w.startswith("severity.csv") for w in idx.warnings)
    assert "covid-blues  " in idx.summary()


def test_no_video_is_a_one_line_error(tmp_path):
    (tmp_path / "b" / "lus_videos").mkdir(parents=True)
    (tmp_path / "b" / "severity.csv").write_text("video_file\n")
    with pytest.raises(PocovidError, match="no recordings found"):
        index_dataset(tmp_path / "b")


# ------------------------------------------------------------------------------ several datasets


def test_combined_index_keeps_datasets_and_prefixes_patients(pocus, blues, tmp_path):
    idx = load_index([pocus, blues])
    assert idx.datasets() == ["pocus", "covid-blues"] and idx.layout == "combined"
    assert idx.roots == {"pocus": pocus.resolve(), "covid-blues": blues.resolve()}
    for it in idx:
        assert it.patient.startswith(it.dataset + ":") and it.exam.startswith(it.dataset + ":")
        assert idx.abspath(it).is_file()
    tc = idx.target_counts()
    assert tc["covid-blues"]["severity"] == len(CLASSES) * 3 + 1 and tc["covid-blues"]["consolidation"] == 0
    assert tc["pocus"]["consolidation"] == 18 and tc["pocus"]["severity"] == 12  # pneumonia: no score
    # a dataset named twice gets a new name, ids still never collide
    twice = combine([index_dataset(blues), index_dataset(blues)])
    assert twice.datasets() == ["covid-blues", "covid-blues-2"] and len(twice.patients()) == 2 * len(CLASSES)
    # the combined CSV reads back with both roots
    back = read_index(write_index(idx, tmp_path / "both.csv"))
    assert back.items == idx.items and back.roots == idx.roots


def test_cli_index_several_roots_prints_targets_per_dataset(pocus, blues):
    r = runner.invoke(app, ["data", "index", str(pocus), str(blues)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"datasets: pocus = {pocus.resolve()}; covid-blues = {blues.resolve()}")
    lines = r.output.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("targets known"))
    assert lines[head + 1].split() == ["dataset", "recordings", "patients", "b_lines", "a_lines", "consolidation",
                                       "effusion", "pleural_irregularity", "air_bronchogram", "severity"]
    assert lines[head + 2].split() == ["pocus", "18", "9", "18", "18", "18", "18", "18", "18", "12"]
    assert lines[head + 3].split() == ["covid-blues", "19", "6", "19", "19", "0", "0", "0", "0", "19"]


def test_kfold_over_two_datasets_stratified_by_dataset_and_label(pocus, big_blues, tmp_path):
    idx = load_index([pocus, big_blues], classes="covid,pneumonia,regular")
    s = patient_folds(idx, n_folds=3, seed=0)
    assert check_split(s) == []
    for k in range(3):
        covid = {it.dataset for it in s.folds[k] if it.label == "covid"}
        assert covid == {"pocus", "covid-blues"}, s.table()
    assert "covid-blues:" in s.table() and "stratified by dataset and label" in s.strategy
    p = s.save(tmp_path / "s.json")
    d = json.loads(p.read_text())
    assert d["version"] == 2 and d["mode"] == "kfold" and d["datasets"] == ["pocus", "covid-blues"]
    assert d["roots"] == {"pocus": str(pocus.resolve()), "covid-blues": str(big_blues.resolve())}
    assert {e["dataset"] for f in d["folds"] for e in f["exams"]} == {"pocus", "covid-blues"}
    back = load_splits(p)
    assert back.roots == s.roots and check_split(back) == []
    # a leak across folds is named with its dataset-prefixed patient
    leaked = back.folds[0].pop()
    back.folds[1].append(leaked)
    assert any(pr.startswith(f"patient {leaked.patient} is in folds 0, 1") for pr in check_split(back))


def test_one_dataset_split_file_is_unchanged(pocus, tmp_path):
    s = patient_folds(index_dataset(pocus), n_folds=3, seed=0)
    d = json.loads(s.save(tmp_path / "s.json").read_text())
    assert d["version"] == 1 and "mode" not in d and "roots" not in d and d["root"] == str(pocus.resolve())
    assert all(it["dataset"] == "pocus" for f in d["folds"] for it in f["items"])
    assert all(e["exam"] == e["patient"] for f in d["folds"] for e in f["exams"])


def test_leave_one_dataset_out(pocus, blues, tmp_path):
    s = patient_folds(load_index([pocus, blues]), mode="lodo")
    assert s.n_folds == 2 and s.fold_names == ["pocus", "covid-blues"]
    assert [{it.dataset for it in f} for f in s.folds] == [{"pocus"}, {"covid-blues"}]
    assert check_split(s) == []
    back = load_splits(s.save(tmp_path / "lodo.json"))
    assert back.mode == "lodo" and back.fold_names == ["pocus", "covid-blues"] and check_split(back) == []
    back.folds[0].append(back.folds[1][0])  # a BLUES recording in the POCUS fold
    assert any("holds out dataset pocus but lists recordings of covid-blues" in p for p in check_split(back))
    with pytest.raises(PocovidError, match="only one dataset"):
        patient_folds(index_dataset(pocus), mode="lodo")


def test_leave_one_source_out(pocus, blues):
    s = patient_folds(load_index([pocus, blues]), mode="loso")
    assert s.fold_names == ["pocus:src1", "pocus:src2", "pocus:src3", "covid-blues"]
    for name, f in zip(s.fold_names, s.folds):
        assert {f"{it.dataset}:src{it.patient.split('-pat')[0].split(':src')[1]}" if it.dataset == "pocus"
                else it.dataset for it in f} == {name}
    assert check_split(s) == []
    assert len(patient_folds(index_dataset(pocus), mode="loso").folds) == 3
    with pytest.raises(PocovidError, match="unknown split mode"):
        patient_folds(index_dataset(pocus), mode="random")


def test_cli_split_several_roots_modes_and_check(pocus, big_blues, tmp_path):
    for mode, n in (("kfold", 3), ("lodo", 2), ("loso", 4)):
        out = tmp_path / f"{mode}.json"
        r = runner.invoke(app, ["data", "split", str(pocus), str(big_blues), "--mode", mode, "--folds", "3",
                                "--classes", "covid,pneumonia,regular", "--out", str(out)])
        assert r.exit_code == 0, r.output
        assert f"{n} folds" in r.output and "datasets pocus,covid-blues" in r.output
        r = runner.invoke(app, ["data", "check-split", str(out)])
        assert r.exit_code == 0 and r.output.startswith("OK"), r.output
    # --root, one per dataset, in any order: matched by layout
    moved = _copy(big_blues, tmp_path / "elsewhere")
    r = runner.invoke(app, ["data", "check-split", str(tmp_path / "lodo.json"), "--root", str(moved),
                            "--root", str(pocus)])
    assert r.exit_code == 0 and str(moved) in r.output, r.output
    r = runner.invoke(app, ["data", "check-split", str(tmp_path / "lodo.json"), "--root", str(pocus)])
    assert r.exit_code == 1 and "2 dataset(s)" in r.output


def test_train_on_two_roots_end_to_end(pocus, big_blues, tmp_path):
    splits = tmp_path / "s.json"
    r = runner.invoke(app, ["data", "split", str(pocus), str(big_blues), "--folds", "2", "--classes",
                            "covid,pneumonia,regular", "--out", str(splits)])
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(big_blues), str(pocus), "--splits", str(splits), "--out", str(run),
                            "--size", "64", "--heads", "1", "--epochs", "2", "--aug-copies", "0", "--max-frames",
                            "2", "--batch-size", "16", "--no-pretrained", "--quiet", "--val-fraction", "0"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(run / "cv" / "predictions.csv", newline="")))
    assert len(rows) == len(load_splits(splits).items())
    assert json.loads((run / "config.json").read_text())["splits_roots"]["covid-blues"] == str(big_blues.resolve())
    r = runner.invoke(app, ["train", str(pocus), "--splits", str(splits), "--out", str(tmp_path / "r2"), "--quiet",
                            "--no-pretrained"])
    assert r.exit_code == 1 and "holds 2 datasets (pocus, covid-blues): give one folder per dataset" in r.output


# ------------------------------------------------------------------------------ real data


@pytest.mark.realdata
def test_real_blues_index(shared_blues):
    idx = index_dataset(shared_blues)
    assert len(idx) == 190 and not idx.failures and not idx.skipped, idx.failures
    assert len(idx.patients()) == 33
    diag = {}
    for r in csv.DictReader(open(shared_blues / "clinical_variables.csv", newline="")):
        on = [c.split("#")[1] for c in r if c.startswith("clin_diagn#") and r[c] == "1"]
        diag[f"pat{r['patient_id']}"] = {"COVID19_pneumonia": "covid", "bacterial_pneumonia": "pneumonia",
                                         "healthy_lung": "regular", "other_viral_pneumonia": "viral",
                                         "other_lung_disease": "other"}[on[0]]
    assert all(it.label == diag[it.patient] for it in idx)
    assert sum(it.findings.severity is not None for it in idx) == 190
    assert sum(it.findings.a_lines is not None and it.findings.b_lines is not None for it in idx) == 190
    assert all(it.zone in ("L1", "L2", "L3", "R1", "R2", "R3") for it in idx)
    assert Counter(it.label for it in idx) == {"covid": 100, "other": 45, "regular": 27, "pneumonia": 12, "viral": 6}
    assert all(it.pcr is (it.label == "covid") for it in idx)


@pytest.mark.realdata
def test_real_both_roots_split_and_lodo(shared_pocus, shared_blues, tmp_path):
    idx = load_index([shared_pocus, shared_blues])
    s = patient_folds(idx, n_folds=5, seed=0)
    for k in range(5):
        assert {it.dataset for it in s.folds[k] if it.label == "covid"} == {"pocus", "covid-blues"}, s.table()
    assert check_split(load_splits(s.save(tmp_path / "k5.json"))) == []
    lodo = patient_folds(idx, mode="lodo")
    assert check_split(load_splits(lodo.save(tmp_path / "lodo.json"))) == []


def test_evaluate_two_roots(model_file, pocus, blues, tmp_path):
    from pocovid.evaluation import evaluate_folder

    m = evaluate_folder(model_file, [pocus, blues], tmp_path / "ev", progress=False, max_frames=2)
    rows = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv", newline="")))
    assert {r["dataset"] for r in rows} == {"pocus", "covid-blues"}
    assert all(r["exam"].startswith(r["dataset"] + ":") for r in rows)
    assert any("label 'other' is not among the evaluated classes" in s for s in m["skipped"])
