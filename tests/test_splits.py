"""Patient-grouped folds: no leak, deterministic, every class in every fold; split file; check-split."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pocovid.cli import app
from pocovid.data import DatasetIndex, DatasetItem, Splits, check_split, index_dataset, load_splits, patient_folds
from pocovid.errors import PocovidError
from pocovid.phantom.dataset import write_demo_dataset

runner = CliRunner()


def _fake_index(spec, root="/nonexistent") -> DatasetIndex:
    """spec: list of (patient, label, n_clips); no files (patient_folds only reads the index)."""
    items = []
    for pat, lab, n in spec:
        for j in range(n):
            items.append(DatasetItem(path=f"{lab}/{pat}_clip{j}.mp4", kind="video", probe="convex", label=lab,
                                     patient=pat))
    return DatasetIndex(root=Path(root), items=items, layout="test")


def _like_real_convex():
    """Shaped like the real convex 3-class set: 6 COVID patients with 1-5 clips, many small
    pneumonia / regular patients, a few big ones, and patients with clips of two labels."""
    spec = [("c1", "covid", 5), ("c2", "covid", 5), ("c3", "covid", 4), ("c4", "covid", 3), ("c5", "covid", 3),
            ("c6", "covid", 1)]
    spec += [(f"p{i}", "pneumonia", 1 + (i % 5 == 0) * 2) for i in range(28)]
    spec += [(f"r{i}", "regular", 1 + (i % 7 == 0) * 5) for i in range(25)]
    spec += [("m1", "pneumonia", 1), ("m1", "regular", 1), ("m2", "pneumonia", 3), ("m2", "regular", 2)]
    return _fake_index(spec)


def _assert_no_leak(s: Splits):
    fold_of = {}
    for k, f in enumerate(s.folds):
        for it in f:
            assert fold_of.setdefault(it.patient, k) == k, f"patient {it.patient} in folds {fold_of[it.patient]}, {k}"


def _fold_sets(s: Splits):
    return [sorted(it.path for it in f) for f in s.folds]


# ------------------------------------------------------------------------------ in memory


@pytest.mark.parametrize("seed", range(5))
def test_every_class_in_every_fold_and_no_leak(seed):
    idx = _like_real_convex()
    s = patient_folds(idx, n_folds=5, seed=seed)
    _assert_no_leak(s)
    assert sorted(it.path for it in s.items()) == sorted(it.path for it in idx.items)
    for k, c in enumerate(s.counts()):
        assert all(c[lab] > 0 for lab in ("covid", "pneumonia", "regular")), (k, c)
    # the mixed-label patients stay whole
    for pat in ("m1", "m2"):
        assert len({k for k, f in enumerate(s.folds) for it in f if it.patient == pat}) == 1


def test_deterministic_for_a_seed():
    idx = _like_real_convex()
    a, b = patient_folds(idx, 5, seed=3), patient_folds(idx, 5, seed=3)
    assert _fold_sets(a) == _fold_sets(b)
    # the item order of the index does not change the result either
    rev = DatasetIndex(root=idx.root, items=list(reversed(idx.items)), layout="test")
    assert _fold_sets(patient_folds(rev, 5, seed=3)) == _fold_sets(a)
    others = {tuple(map(tuple, _fold_sets(patient_folds(idx, 5, seed=s)))) for s in range(3)}
    assert len(others) > 1  # seeds do change the folds


def test_class_with_too_few_patients_is_allowed():
    spec = [(f"c{i}", "covid", 2) for i in range(6)] + [(f"r{i}", "regular", 1) for i in range(10)] \
        + [("v1", "viral", 2), ("v2", "viral", 1)]
    s = patient_folds(_fake_index(spec), n_folds=5, seed=0)
    _assert_no_leak(s)
    assert sum(c["viral"] > 0 for c in s.counts()) == 2
    assert all(c["covid"] > 0 and c["regular"] > 0 for c in s.counts())
    assert "has no viral" in s.table()


def test_errors():
    with pytest.raises(PocovidError, match="only 3 patient"):
        patient_folds(_fake_index([("a", "covid", 3), ("b", "regular", 2), ("c", "covid", 1)]), n_folds=5)
    with pytest.raises(PocovidError, match="2 or more"):
        patient_folds(_like_real_convex(), n_folds=1)
    with pytest.raises(PocovidError, match="no recordings"):
        patient_folds(_fake_index([]), n_folds=5)


def test_json_round_trip_and_format(tmp_path):
    idx = _like_real_convex()
    s = patient_folds(idx, 5, seed=1)
    p = s.save(tmp_path / "s.json")
    d = json.loads(p.read_text())
    for key in ("version", "created", "root", "seed", "n_folds", "group_rule", "classes", "probes", "counts", "folds"):
        assert key in d
    assert d["version"] == 1 and d["seed"] == 1 and d["n_folds"] == 5 and len(d["folds"]) == 5
    assert d["classes"] == ["covid", "pneumonia", "regular"] and d["probes"] == ["convex"]
    it = d["folds"][0]["items"][0]
    assert set(it) >= {"path", "label", "patient", "kind", "probe"}
    assert d["counts"][0]["covid"] == d["folds"][0]["counts"]["covid"]
    back = load_splits(p)
    assert _fold_sets(back) == _fold_sets(s) and back.classes == s.classes and back.root == s.root
    train, test = back.train_test(2)
    assert len(train) + len(test) == len(idx.items) and not {t.patient for t in train} & {t.patient for t in test}


def test_load_bad_files(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(PocovidError, match="invalid JSON at line 1"):
        load_splits(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"version": 1}')
    with pytest.raises(PocovidError, match="no 'folds'"):
        load_splits(tmp_path / "b.json")
    (tmp_path / "c.json").write_text('{"version": 99, "folds": []}')
    with pytest.raises(PocovidError, match="newer"):
        load_splits(tmp_path / "c.json")


# ------------------------------------------------------------------------------ on files


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("split") / "ds", n_patients_per_class=5, clips_per_patient=2,
                              width=48, height=48, n_frames=4)


def test_split_demo_and_check(demo):
    s = patient_folds(index_dataset(demo), n_folds=5, seed=0)
    _assert_no_leak(s)
    assert all(all(v == 2 for v in c.values()) for c in s.counts())  # one patient of each class per fold
    assert check_split(s) == []


def test_check_split_catches_leak_duplicate_missing(demo, tmp_path):
    s = patient_folds(index_dataset(demo), n_folds=5, seed=0)
    leaked = s.folds[0].pop()  # move one clip of a patient into another fold
    s.folds[1].append(leaked)
    problems = check_split(s)
    assert any(p.startswith(f"patient {leaked.patient} is in folds 0, 1") for p in problems), problems
    s.folds[1].pop()
    s.folds[0].append(leaked)
    s.folds[2].append(s.folds[2][0])
    assert any("is listed 2 times" in p for p in check_split(s))
    s.folds[2].pop()
    assert check_split(s) == []
    assert any(p.startswith("file missing: ") for p in check_split(s, root=tmp_path))


def test_cli_split_and_check_split(demo, tmp_path):
    out = tmp_path / "splits.json"
    r = runner.invoke(app, ["data", "split", str(demo), "--folds", "5", "--seed", "0", "--probe", "convex",
                            "--classes", "covid,pneumonia,regular", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "30 recordings, 15 patients, 5 folds" in r.output and "fold" in r.output and out.is_file()
    r = runner.invoke(app, ["data", "check-split", str(out)])
    assert r.exit_code == 0 and r.output.startswith("OK")
    # the same split again: same folds
    out2 = tmp_path / "again.json"
    runner.invoke(app, ["data", "split", str(demo), "--out", str(out2), "--classes", "covid,pneumonia,regular",
                        "--probe", "convex"])
    assert _fold_sets(load_splits(out)) == _fold_sets(load_splits(out2))
    # leak a patient by editing the file
    d = json.loads(out.read_text())
    moved = d["folds"][0]["items"].pop()
    d["folds"][3]["items"].append(moved)
    d["folds"][0]["counts"][moved["label"]] -= 1
    d["folds"][3]["counts"][moved["label"]] += 1
    leak = tmp_path / "leak.json"
    leak.write_text(json.dumps(d))
    r = runner.invoke(app, ["data", "check-split", str(leak)])
    assert r.exit_code == 1 and f"patient {moved['patient']} is in folds 0, 3" in r.output
    # a missing file, and --root pointing elsewhere
    d = json.loads(out.read_text())
    gone = demo / d["folds"][1]["items"][0]["path"]
    r = runner.invoke(app, ["data", "check-split", str(out), "--root", str(tmp_path)])
    assert r.exit_code == 1 and "file missing" in r.output
    data = gone.read_bytes()
    gone.unlink()
    try:
        r = runner.invoke(app, ["data", "check-split", str(out)])
        assert r.exit_code == 1 and f"file missing: {gone}" in r.output
    finally:
        gone.write_bytes(data)


def test_cli_split_from_index_csv(demo, tmp_path):
    csv_path = tmp_path / "index.csv"
    assert runner.invoke(app, ["data", "index", str(demo), "--out", str(csv_path)]).exit_code == 0
    r = runner.invoke(app, ["data", "split", str(csv_path), "--out", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    assert check_split(load_splits(tmp_path / "s.json")) == []


def test_cli_split_errors(demo, tmp_path):
    r = runner.invoke(app, ["data", "split", str(demo), "--folds", "50", "--out", str(tmp_path / "x.json")])
    assert r.exit_code == 1 and "too few for 50 folds" in r.output
    r = runner.invoke(app, ["data", "check-split", str(tmp_path / "nope.json")])
    assert r.exit_code == 1 and "no such file" in r.output


# ------------------------------------------------------------------------------ real data


@pytest.mark.realdata
@pytest.mark.parametrize("seed", range(5))
def test_real_convex_split(shared_pocus, seed, tmp_path):
    idx = index_dataset(shared_pocus, probes="convex", classes="covid,pneumonia,regular")
    s = patient_folds(idx, n_folds=5, seed=seed)
    _assert_no_leak(s)
    assert len(s.items()) == 101
    for c in s.counts():
        assert c["covid"] > 0 and c["pneumonia"] > 0 and c["regular"] > 0, s.table()
    p = s.save(tmp_path / "s.json")
    assert check_split(load_splits(p)) == []
    # Source 2 patient 37 (pneumonia + regular) and the LITFL case-3 patient stay whole
    for pat in ("src2-pat37", "src16-pat7"):
        assert len({k for k, f in enumerate(s.folds) for it in f if it.patient == pat}) == 1


@pytest.mark.realdata
def test_real_cli_split_check(shared_pocus, tmp_path):
    out = tmp_path / "splits.json"
    r = runner.invoke(app, ["data", "split", str(shared_pocus), "--folds", "5", "--seed", "0", "--probe", "convex",
                            "--classes", "covid,pneumonia,regular", "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "check-split", str(out)])
    assert r.exit_code == 0 and r.output.startswith("OK"), r.output
