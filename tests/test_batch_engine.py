"""`pocovid analyze` over many recordings: folders and CSV lists as input, resuming, the Ray engine
(same outputs as the local loop), progress on stderr, summary.csv for withheld results. Phantom
recordings and the quick phantom model only."""

import csv
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from pocovid.analysis import AnalysisConfig, analyze_files
from pocovid.analysis.batch import SOURCE_RECORD, BatchEntry, BatchResult, write_summary
from pocovid.analysis.inputs import MAX_DEPTH, collect_recordings, recordings_in, recordings_listed
from pocovid.errors import PocovidError
from pocovid.phantom import write_phantom

torch.set_num_threads(1)  # the CI machine has 2 cores, shared
CFG = AnalysisConfig(rate_hz=4, report=False, key_frames=1)


def _clip(path, label="covid", frames=16, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_phantom(path, label=label, n_frames=frames, fps=8, width=200, height=160, seed=seed)
    return path


@pytest.fixture(scope="module")
def model(model_file):
    from pocovid.inference import load

    return load(str(model_file))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A nested folder: recordings of three kinds, a DICOM without extension, hidden files, other files."""
    d = tmp_path_factory.mktemp("recordings")
    _clip(d / "b.mp4", "regular", seed=1)
    _clip(d / "a" / "x.png", "covid", seed=2)
    _clip(d / "a" / "deep" / "c.dcm", "pneumonia", seed=3)
    shutil.copy(d / "a" / "deep" / "c.dcm", d / "a" / "scanner_export")  # DICOM, no extension
    _clip(d / ".hidden" / "h.mp4")
    _clip(d / "a" / ".h.mp4")
    (d / "notes.txt").write_text("not a recording")
    (d / "a" / "README").write_text("no extension, not DICOM")
    return d


# ------------------------------------------------------------------------------ inputs
def test_a_folder_gives_its_recordings_sorted_hidden_and_other_files_left_out(folder, tmp_path):
    os.symlink("..", folder / "a" / "loop")  # a link loop: walked once
    try:
        found = recordings_in(folder)
    finally:
        os.unlink(folder / "a" / "loop")
    rel = [os.path.relpath(p, folder) for p in found.paths]
    assert rel == ["a/deep/c.dcm", "a/scanner_export", "a/x.png", "b.mp4"]
    assert all(p.startswith(str(folder)) for p in found.paths)
    assert sorted(s.split(": ", 1)[1] for s in found.skipped) == [
        "not a recording (file type '.txt')", "not a recording (no extension, not DICOM)"]


def test_output_and_result_folders_are_not_inputs(folder, tmp_path):
    d = tmp_path / "in"
    shutil.copytree(folder, d)
    out = d / "out"
    (out / "b").mkdir(parents=True)
    (out / "b" / "key_frame_1.png").write_bytes((d / "a" / "x.png").read_bytes())
    (d / "old" / "b").mkdir(parents=True)  # an earlier analysis's folder, elsewhere
    (d / "old" / "b" / "result.json").write_text("{}")
    (d / "old" / "b" / "key_frame_1.png").write_bytes((d / "a" / "x.png").read_bytes())
    got = collect_recordings([d], exclude=[out]).paths
    assert [os.path.relpath(p, d) for p in got] == ["a/deep/c.dcm", "a/scanner_export", "a/x.png", "b.mp4"]


def test_folders_are_bounded(tmp_path, monkeypatch):
    deep = tmp_path.joinpath(*["d"] * (MAX_DEPTH + 1))
    deep.mkdir(parents=True)
    with pytest.raises(PocovidError, match="deeper than"):
        recordings_in(tmp_path)
    import pocovid.analysis.inputs as inputs

    monkeypatch.setattr(inputs, "MAX_RECORDINGS", 2)
    for k in range(3):
        (tmp_path / f"{k}.png").write_bytes(b"x")
    with pytest.raises(PocovidError, match="more than 2 recordings"):
        inputs.recordings_in(tmp_path, exclude=[tmp_path / "d"])


def test_a_csv_list_resolves_relative_paths_against_its_folder(folder, tmp_path):
    lst = tmp_path / "lists" / "todo.csv"
    lst.parent.mkdir()
    rel = os.path.relpath(folder / "b.mp4", lst.parent)
    lst.write_text(f"path,note\n{rel},first\n{folder / 'a' / 'x.png'},absolute\n,empty row\n")
    assert [os.path.realpath(p) for p in recordings_listed(lst)] == [
        os.path.realpath(folder / "b.mp4"), os.path.realpath(folder / "a" / "x.png")]
    both = collect_recordings([folder / "b.mp4"], lst).paths  # a file reached twice is analysed once
    assert len(both) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("file\nb.mp4\n")
    with pytest.raises(PocovidError, match="no 'path' column"):
        recordings_listed(bad)


# ------------------------------------------------------------------------------ resuming
def _names(d):
    return sorted(p.name for p in d.iterdir())


def test_resume_skips_finished_results_and_redoes_broken_or_outdated_ones(model, folder, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(folder, src)
    paths = collect_recordings([src]).paths
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)  # the user's own folder with a recording's name: never touched
    (out / "x" / "mine.txt").write_text("keep")
    first = analyze_files(paths, model, out, CFG)
    assert not first.failures and [e.folder.name for e in first.entries] == ["c", "scanner_export", "x-2", "b"]
    assert all((e.folder / SOURCE_RECORD).is_file() for e in first.entries)

    again = analyze_files(paths, model, out, CFG, resume=True)
    assert [e.skipped for e in again.entries] == [True] * 4
    assert [e.folder for e in again.entries] == [e.folder for e in first.entries]
    assert [e.result.prediction for e in again.entries] == [e.result.prediction for e in first.entries]

    (out / "c" / "key_frame_1.png").unlink()  # partial
    (out / "scanner_export" / "result.json").write_text("{broken")  # broken
    os.utime(paths[3], ns=(1, 1))  # the recording changed
    events = []
    third = analyze_files(paths, model, out, CFG, resume=True, events=events.append)
    assert [e.skipped for e in third.entries] == [False, False, True, False]
    assert [e.folder.name for e in third.entries] == ["c", "scanner_export", "x-2", "b"]  # redone in place
    assert (out / "c" / "key_frame_1.png").is_file() and (out / "x" / "mine.txt").read_text() == "keep"
    redo = {os.path.basename(ev.file): ev.note for ev in events if ev.stage == "redo"}
    assert redo == {"c.dcm": "output missing (key_frame_1.png)", "scanner_export":
                    "its result.json cannot be read (ValidationError)", "b.mp4": "the recording changed since"}
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["skipped"] for r in rows] == ["False", "False", "True", "False"]

    events.clear()
    other = analyze_files(paths[:1], model, out, AnalysisConfig(rate_hz=2, report=False, key_frames=1),
                          resume=True, events=events.append)  # other settings: redone
    assert not other.entries[0].skipped and (events[0].stage, events[0].note) == ("redo", "other settings")
    assert _names(out) == ["b", "c", "scanner_export", "summary.csv", "x", "x-2"]
    # settings that result.json does not hold (key frames, Grad-CAM layer, full screen, path shown)
    events.clear()
    cfg = dataclasses.replace(CFG, key_frames=CFG.key_frames + 1, full_screen=not CFG.full_screen)
    analyze_files(paths[1:2], model, out, cfg, resume=True, events=events.append)
    assert (events[0].stage, events[0].note) == ("redo", "other settings (key_frames, full_screen)")
    assert analyze_files(paths[1:2], model, out, cfg, resume=True).entries[0].skipped


def test_summary_withholds_label_and_probabilities_out_of_distribution(model, folder, tmp_path):
    batch = analyze_files([folder / "b.mp4"], model, tmp_path / "out", CFG)
    r = batch.entries[0].result
    pred = r.prediction.model_copy(update={"withheld": True})
    withheld = r.model_copy(update={"prediction": pred, "out_of_distribution": True})
    both = BatchResult([batch.entries[0], BatchEntry("other.mp4", withheld, batch.entries[0].folder)])
    rows = list(csv.DictReader(open(write_summary(tmp_path / "summary.csv", both))))
    assert rows[0]["status"] == "ok" and rows[0]["label"] == "regular" and float(rows[0]["p_regular"]) > 0.5
    assert rows[1]["status"] == "withheld" and rows[1]["withheld"] == "True"
    assert rows[1]["label"] == "" and rows[1]["p_regular"] == "" and rows[1]["p_covid"] == ""
    # the two spreads are named apart: the clip entropy and the members' standard deviation
    assert "uncertainty" not in rows[0] and float(rows[0]["entropy"]) == r.uncertainty.components["entropy"]
    assert float(rows[0]["member_std"]) == r.uncertainty.components["member_std"]


# ------------------------------------------------------------------------------ the Ray engine
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'pocovid[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield ray
    ray.shutdown()


def _same(a, b, path=""):
    """Equal JSON; floats to 1e-5 relative or 2e-4 absolute: float32 sums differ in their last bits
    between a traced and an eager trunk (a worker that has not traced yet runs a single image
    eagerly) and between thread counts, which may move a value rounded to 4 decimals by one step."""
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=2e-4), (path, a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def test_ray_engine_gives_the_local_results_and_lists_failures(ray_cluster, model, folder, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    paths = [folder / "b.mp4", broken, folder / "a" / "x.png", folder / "a" / "deep" / "c.dcm"]
    local = analyze_files(paths, model, tmp_path / "local", CFG)
    events = []
    distributed = analyze_files(paths, model, tmp_path / "ray", CFG, engine="ray", events=events.append)
    assert len(distributed.failures) == 1 and "broken.mp4" in distributed.failures[0]
    assert distributed.failures == local.failures
    assert [e.folder.name if e.folder else None for e in distributed.entries] == ["b", None, "x", "c"]
    for a, b in zip(local.entries, distributed.entries):
        if a.ok:
            ja, jb = (json.loads((e.folder / "result.json").read_text()) for e in (a, b))
            for j in (ja, jb):  # when, how long and where the frame pass ran (`auto` may choose
                del j["timings"], j["created"], j["model_info"]["runtime"]  # differently per worker)
            _same(ja, jb)
            assert _names(a.folder) == _names(b.folder)
    assert sorted(ev.i for ev in events if ev.stage in ("done", "failed")) == [0, 1, 2, 3]
    assert _names(tmp_path / "ray") == ["b", "c", "summary.csv", "x"]  # no hidden folder left behind


def test_a_local_ray_start_drops_only_rays_token_default_note():
    """Ray warns at every local start that it protects the cluster with a token (kept as it is):
    that line is dropped, any other of its authentication warnings is not."""
    import logging

    pytest.importorskip("ray")
    from pocovid.analysis.ray_engine import _quiet_token_default

    def record(msg):
        return logging.LogRecord("ray._private.authentication", logging.WARNING, "", 0, msg, None, None)

    assert not _quiet_token_default(record("Token authentication is enabled for this Ray cluster. Set ..."))
    assert _quiet_token_default(record("Token authentication is disabled for this Ray cluster. Anyone ..."))


# ------------------------------------------------------------------------------ the CLI
def test_cli_folder_with_progress_on_stderr_and_json_on_stdout(model_file, tmp_path):
    d = tmp_path / "in"
    _clip(d / "long.mp4", frames=60)  # two frame batches of 32
    _clip(d / "sub" / "y.png", "regular")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pocovid.cli", "analyze", str(d), "--model", str(model_file), "--out",
           str(tmp_path / "out"), "--json", "--key-frames", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert [x["status"] for x in json.loads(r.stdout)] == ["ok", "ok"]
    err = r.stderr.splitlines()
    assert f"[1/2] {d / 'long.mp4'}" in err and f"[2/2] {d / 'sub' / 'y.png'}" in err
    frames = [ln for ln in err if ln.startswith("[1/2]") and "(classify)" in ln]
    assert len(frames) >= 2, err  # one line per frame batch (at most one per 10%)
    again = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and json.loads(again.stdout) == json.loads(r.stdout)
    assert sum("skipped, finished result in" in ln for ln in again.stderr.splitlines()) == 2
