"""Training, cross-validation and evaluation end to end on a small phantom dataset."""

import json
import subprocess
import sys

import numpy as np
import pytest

import pocovid.training.cv as cv_mod
from pocovid.data import index_dataset, load_splits, patient_folds
from pocovid.errors import PocovidError
from pocovid.evaluation import evaluate_folder
from pocovid.models import load_model
from pocovid.phantom.dataset import write_demo_dataset
from pocovid.training import TrainConfig, train_run

SMALL = dict(size=96, n_heads=2, epochs=4, patience=2, n_aug=1, rate_hz=None, max_frames=3, batch_size=16)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "ds"
    write_demo_dataset(root, n_patients_per_class=4, clips_per_patient=2, seed=5)
    splits = patient_folds(index_dataset(root), n_folds=3, seed=0)
    path = splits.save(root.parent / "splits.json")
    return root, load_splits(path)


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    root, splits = dataset
    out = tmp_path_factory.mktemp("run")
    return train_run(splits, out, TrainConfig(**SMALL), final=True, root=root, progress=False)


def test_cross_validation_writes_honest_outputs(run, dataset):
    root, splits = dataset
    m = json.loads((run.out_dir / "cv" / "metrics.json").read_text())
    for level in ("video", "frame"):
        for key in ("n", "accuracy", "balanced_accuracy", "mcc", "per_class", "confusion_matrix", "labels"):
            assert key in m[level]
        assert set(m[level]["per_class"]) == {"covid", "pneumonia", "regular"}
    assert m["video"]["n"] == len(splits.items())
    assert m["folds"]["video"]["n_folds"] == 3
    rows = (run.out_dir / "cv" / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("path,label,predicted,p_covid,p_pneumonia,p_regular")
    assert len(rows) == 1 + len(splits.items())
    # B-lines are easy: out-of-fold, the phantom's COVID clips are recognised
    assert m["video"]["per_class"]["covid"]["sensitivity"] >= 0.75
    assert m["video"]["balanced_accuracy"] > 0.5


def test_final_model_loads_and_records_its_training(run):
    model = load_model(run.model_path)
    assert model.classes == ["covid", "pneumonia", "regular"] and model.n_heads == 2
    meta = model.meta
    assert meta["training_config"]["max_frames"] == 3 and meta["data_fingerprint"]
    assert meta["metrics"]["video"]["balanced_accuracy"] is not None
    # what "auto" resolved to on the machine that trained it
    assert meta["extra"]["precision"] == json.loads((run.out_dir / "run.json").read_text())["precision"]


def test_inner_validation_never_sees_the_test_fold(dataset, tmp_path, monkeypatch):
    root, splits = dataset
    seen = []
    real = cv_mod.fit_head

    def spy(head, feats, y, tr, va, **kw):
        if len(va):  # the early-stopping fit (the refit after it trains on tr + va)
            seen.append((tr, va))
        return real(head, feats, y, tr, va, **kw)

    monkeypatch.setattr(cv_mod, "fit_head", spy)
    res = train_run(splits, tmp_path, TrainConfig(**SMALL | {"n_heads": 1, "epochs": 1}), root=root, progress=False)
    fold_of_frame = res.frames.fold
    patient_of_frame = res.frames.patient
    assert len(seen) == splits.n_folds
    for k, (tr, va) in enumerate(seen):
        assert len(va) > 0
        assert not np.any(fold_of_frame[np.concatenate([tr, va])] == k)
        assert not set(patient_of_frame[tr]) & set(patient_of_frame[va])  # inner split is by patient too


def test_run_resumes_without_retraining_finished_folds(dataset, tmp_path, monkeypatch):
    root, splits = dataset
    cfg = TrainConfig(**SMALL | {"n_heads": 1, "epochs": 1})
    first = train_run(splits, tmp_path, cfg, root=root, progress=False)

    def boom(*a, **k):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(cv_mod, "fit_head", boom)
    again = train_run(splits, tmp_path, cfg, root=root, progress=False)
    assert again.metrics["video"]["accuracy"] == first.metrics["video"]["accuracy"]
    # what the first call's training took is kept beside this call's (which only read the folds)
    assert json.loads((tmp_path / "run.json").read_text())["timings"]["earlier"]["cv_s"] == first.timings["cv_s"]


def test_a_stopped_final_training_keeps_the_cross_validations_record(dataset, tmp_path, monkeypatch):
    """run.json is written when the cross-validation ends, before the final model trains: stopping
    that (hours on a slow machine) keeps the record of what the folds took."""
    root, splits = dataset
    real = cv_mod._train_ensemble

    def stopped(*a, **k):
        if any(isinstance(x, str) and x == "final" for x in a):  # its tag
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cv_mod, "_train_ensemble", stopped)
    with pytest.raises(KeyboardInterrupt):
        train_run(splits, tmp_path, TrainConfig(**SMALL | {"n_heads": 1, "epochs": 1}), root=root, progress=False,
                  final=True)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["timings"]["cv_s"] > 0 and "final_s" not in info["timings"] and len(info["folds"]) == splits.n_folds
    assert not (tmp_path / "model.pt").exists() and (tmp_path / "cv" / "metrics.json").is_file()


def test_runs_on_other_split_files_share_the_frame_and_trunk_cache(dataset, tmp_path, monkeypatch):
    root, splits = dataset
    cfg = TrainConfig(**SMALL | {"n_heads": 1, "epochs": 1})
    cache = tmp_path / "cache"
    train_run(splits, tmp_path / "a", cfg, root=root, progress=False, cache_dir=cache)
    assert not (tmp_path / "a" / "cache").exists() and len(list(cache.iterdir())) == 2
    other = load_splits(patient_folds(index_dataset(root), n_folds=2, seed=1).save(tmp_path / "other.json"))

    def boom(*a, **k):
        raise AssertionError("cached frames or trunk features were computed again")

    monkeypatch.setattr(cv_mod, "extract_frames", boom)
    monkeypatch.setattr(cv_mod, "trunk_features", boom)
    res = train_run(other, tmp_path / "b", cfg, root=root, progress=False, cache_dir=cache)
    # the cached frames carry the folds of the split file being run, not of the run that cached them
    fold_of = {it.path: k for k, fold in enumerate(other.folds) for it in fold}
    assert all(c["fold"] == fold_of[c["path"]] for c in res.frames.clips)
    assert res.metrics["folds"]["video"]["n_folds"] == 2


def test_trunk_cache_from_onnx_runtime_matches_torch(run, monkeypatch):
    """The trunk cache is computed on ONNX Runtime when it is installed (a few times torch's speed): the
    same maps to the float16 the cache stores, augmented copies included; without it, on torch."""
    import builtins

    import torch

    import pocovid.training.frames as frames_mod

    model = load_model(run.model_path)
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (20, model.input_config.size, model.input_config.size), dtype=np.uint8)
    onnx_maps = frames_mod.trunk_features(model, grey, 1, seed=3, progress=False)
    with torch.no_grad():
        torch_clean = model.forward_trunk(model.input_tensor(grey)).numpy().astype(np.float16)
    np.testing.assert_allclose(onnx_maps[0].astype(np.float32), torch_clean.astype(np.float32),
                               rtol=2e-3, atol=2e-3)

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("no onnxruntime here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    run_fn, batch = frames_mod._trunk_runner(model, 64)
    assert batch == 64  # torch's own batch: the fallback was taken
    torch_maps = frames_mod.trunk_features(model, grey, 1, seed=3, progress=False)
    np.testing.assert_allclose(onnx_maps.astype(np.float32), torch_maps.astype(np.float32), rtol=2e-3, atol=2e-3)
    assert not np.array_equal(onnx_maps[0], onnx_maps[1])  # the augmented copy is another view


def test_bfloat16_training_runs_the_head_in_bfloat16_and_learns(monkeypatch):
    """precision bfloat16: the head's forward passes run in bfloat16 under autocast while its weights
    stay float32 and its predictions afterwards are float32, and it learns what float32 learns;
    "auto" follows the CPU's native bfloat16."""
    import torch

    from pocovid.training import fit as fit_mod

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    feats = rng.normal(size=(2, len(y), 8, 4, 4)).astype(np.float16)
    feats[:, np.arange(len(y)), y] += 2.0  # class c lights channel c: separable
    idx = rng.permutation(len(y))
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        head = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(16, 3))
        seen = []
        conv.register_forward_hook(lambda m, i, o, seen=seen: seen.append((m.training, o.dtype)))
        r = fit_mod.fit_head(head, feats, y, idx[:90], idx[90:], epochs=15, patience=15, lr=1e-2, weight_decay=0,
                             batch_size=16, label_smoothing=0, seed=0, dtype=dtype)
        assert {d for _, d in seen} == {dtype}  # training and validation passes
        assert all(p.dtype == torch.float32 for p in head.parameters())
        assert conv.weight.is_contiguous()  # trained channels-last, handed back in the usual layout
        seen.clear()
        p = fit_mod.predict_head(head, feats, idx[90:])
        assert {d for _, d in seen} == {torch.float32}  # predictions: as inference
        assert np.mean(p.argmax(1) == y[idx[90:]]) >= 0.9, dtype
        assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    monkeypatch.setattr(fit_mod, "native_bfloat16", lambda: False)
    assert fit_mod.training_dtype("auto") == torch.float32
    monkeypatch.setattr(fit_mod, "native_bfloat16", lambda: True)
    assert fit_mod.training_dtype("auto") == torch.bfloat16
    # backbone stages training too: float32 (bfloat16 depthwise convolutions train slower)
    assert fit_mod.training_dtype("auto", trains_backbone=True) == torch.float32
    assert fit_mod.training_dtype("bfloat16", trains_backbone=True) == torch.bfloat16  # asked for by name
    assert fit_mod.training_dtype("float32") == torch.float32
    with pytest.raises(ValueError, match="fp8"):
        fit_mod.training_dtype("fp8")
    from pocovid.training.config import ConfigError
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig.from_dict({"precision": "fp8"})


def test_killed_final_training_leaves_no_model(dataset, tmp_path, monkeypatch):
    root, splits = dataset

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cv_mod, "fit_head", killed)
    with pytest.raises(KeyboardInterrupt):
        train_run(splits, tmp_path, TrainConfig(**SMALL), final=True, cv=False, root=root, progress=False)
    assert not (tmp_path / "model.pt").exists()
    assert not list(tmp_path.glob("*.tmp*"))


def test_evaluate_scores_a_folder_and_lists_what_it_skipped(run, dataset, tmp_path):
    root, _ = dataset
    viral = root / "pocus_videos" / "convex" / "Vir_extra_clip1.mp4"
    from pocovid.phantom import write_phantom

    write_phantom(viral, label="covid", width=112, height=112, n_frames=6, seed=9)
    (root / "pocus_videos" / "convex" / "Cov_broken.mp4").write_text("not a video")
    try:
        m = evaluate_folder(run.model_path, root, tmp_path / "eval", progress=False)
    finally:
        viral.unlink()
        (root / "pocus_videos" / "convex" / "Cov_broken.mp4").unlink()
    assert m["video"]["n"] == 24
    assert any("Vir_extra_clip1" in s and "viral" in s for s in m["skipped"])
    assert any("Cov_broken" in s for s in m["skipped"])
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["skipped"] == m["skipped"]
    for png in ("confusion_video.png", "roc_video.png", "reliability_video.png"):
        assert (tmp_path / "eval" / png).stat().st_size > 1000


def test_split_without_a_class_cannot_train(dataset, tmp_path):
    root, splits = dataset
    with pytest.raises(PocovidError, match="viral"):
        train_run(splits, tmp_path, TrainConfig(**SMALL | {"classes": ("covid", "viral")}), root=root, progress=False)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pocovid.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("case", ["missing_split", "bad_json", "unknown_class", "no_model", "empty_folder"])
def test_cli_errors_are_one_line(case, dataset, run, tmp_path):
    root, _ = dataset
    if case == "missing_split":
        r = _cli("train", root, "--splits", tmp_path / "nope.json", "--out", tmp_path / "r")
    elif case == "bad_json":
        (tmp_path / "s.json").write_text("{not json")
        r = _cli("train", root, "--splits", tmp_path / "s.json", "--out", tmp_path / "r")
    elif case == "unknown_class":
        r = _cli("train", root, "--splits", root.parent / "splits.json", "--out", tmp_path / "r", "--classes", "flu")
    elif case == "no_model":
        r = _cli("evaluate", root, "--model", tmp_path / "none.pt", "--out", tmp_path / "e")
    else:
        (tmp_path / "empty").mkdir()
        r = _cli("evaluate", tmp_path / "empty", "--model", run.model_path, "--out", tmp_path / "e")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    errs = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errs) == 1, r.stderr


def test_empty_fold_is_refused(dataset, tmp_path):
    root, splits = dataset
    d = splits.to_dict()
    d["folds"][1]["items"] = []
    (tmp_path / "s.json").write_text(json.dumps(d))
    with pytest.raises(PocovidError):
        sp = load_splits(tmp_path / "s.json")
        train_run(sp, tmp_path / "r", TrainConfig(**SMALL), root=root, progress=False)
