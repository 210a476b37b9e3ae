"""Dataset index: both layouts, labels, probes, metadata, filters, failures, CSV, CLI."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pocovid.cli import app
from pocovid.data import (
    FINDINGS,
    INDEX_COLUMNS,
    Findings,
    index_dataset,
    label_from_filename,
    normalize_label,
    parse_classes,
    patient_from_filename,
    read_index,
    write_index,
)
from pocovid.errors import PocovidError
from pocovid.phantom.dataset import write_demo_dataset
from pocovid.phantom.writers import write_dicom

runner = CliRunner()


@pytest.fixture(scope="module")
def public_demo(tmp_path_factory) -> Path:
    # 3 classes x 2 patients (probes alternate convex / linear) x 2 clips + 1 image each
    return write_demo_dataset(tmp_path_factory.mktemp("public") / "ds", n_patients_per_class=2,
                              clips_per_patient=2, images_per_patient=1, probes=("convex", "linear"),
                              width=64, height=64, n_frames=6)


@pytest.fixture(scope="module")
def folders_demo(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("folders") / "ds", n_patients_per_class=2,
                              clips_per_patient=2, layout="folders", width=64, height=64, n_frames=6)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def _a_clip(root: Path) -> Path:
    return next(p for p in sorted(root.rglob("*.mp4")))


# ------------------------------------------------------------------------------------ labels


def test_label_from_filename_prefixes():
    assert label_from_filename("Cov-Atlas+(44).gif") == ("covid", False)
    assert label_from_filename("Cov_combatting_Image1.mp4") == ("covid", False)
    assert label_from_filename("Pneu_liftl_pneu_case3_clip3.mp4") == ("pneumonia", False)
    assert label_from_filename("pneu-radiopaeda.mp4") == ("pneumonia", False)
    assert label_from_filename("Reg_pat1Image_132943.mpeg") == ("regular", False)
    assert label_from_filename("REG_x.png") == ("regular", False)
    assert label_from_filename("Vir_whitelung_h1n1.mp4") == ("viral", False)
    assert label_from_filename("Vir_or_Pneu_case1.mp4") == ("viral", True)
    assert label_from_filename("Regional_scan.mp4") == (None, False)
    assert label_from_filename("clip1.mp4") == (None, False)


def test_normalize_label_and_classes():
    assert normalize_label("COVID-19") == "covid"
    assert normalize_label("Bacterial pneumonia") == "pneumonia"
    assert normalize_label("Healthy") == "regular"
    assert normalize_label("Viral pneumonia") == "viral"
    assert normalize_label("something") is None
    assert parse_classes("covid, Healthy,pneumonia") == ["covid", "regular", "pneumonia"]
    with pytest.raises(PocovidError, match="unknown class 'flu'"):
        parse_classes("covid,flu")


@pytest.mark.parametrize("names, same", [
    (["Reg_pat1Image_132943.mpeg", "Reg_pat1Image_133043.mpeg"], True),
    (["Pneu_liftl_pneu_case3_clip3.mp4", "Pneu_liftl_pneu_case3_clip4.mp4", "Pneu_liftl_pneu_case3_clip5.mp4"], True),
    ([f"Cov_combatting_Image{i}.mp4" for i in range(1, 6)] + ["Cov_combatting_image4.mp4"], True),
    (["Cov-Atlas+(44).gif", "Cov-Atlas-+(43).gif"], True),
    (["Cov_denault_proposedUS_vid10.mov", "Cov_denault_proposedUS_vid14.mov"], True),
    (["Reg_Avi_lung-sliding.MP4", "Reg_Avi_lung-sliding-2.MP4"], True),
    (["Cov_Oliviera_2020_Fig15A.jpg", "Cov_Oliviera_2020_Fig4A.jpg"], True),
    (["Reg_pat1Image_132943.mpeg", "Reg_pat4Image_135904.mpeg"], False),
    (["Vir_whitelung_h1n1.mp4", "Vir_liftl_H1N1_case2_clip1.mp4"], False),
    (["Pneu_northumbria_0409_set1_vid1.avi", "Pneu_northumbria_0409_set3_vid1.avi"], False),
])
def test_patient_from_filename(names, same):
    keys = {patient_from_filename(n) for n in names}
    assert (len(keys) == 1) is same, keys


# ---------------------------------------------------------------------------- public layout


def test_public_layout_with_metadata(public_demo):
    idx = index_dataset(public_demo)
    assert idx.layout == "public" and idx.metadata == "dataset_metadata.csv"
    assert len(idx) == 3 * 2 * 3 and not idx.failures and not idx.skipped
    assert not idx.warnings, idx.warnings
    c = idx.counts()
    for lab in ("covid", "pneumonia", "regular"):
        assert c[(lab, "convex", "video")] == 2 and c[(lab, "linear", "video")] == 2
        assert c[(lab, "convex", "image")] == 1 and c[(lab, "linear", "image")] == 1
    for it in idx:
        assert it.label_from == "metadata" and it.group_from == "metadata"
        assert it.label == label_from_filename(it.name)[0]
        assert it.probe == it.path.split("/")[1]  # pocus_videos/<probe>/file
        assert it.kind == ("video" if it.path.startswith("pocus_videos") else "image")
        assert it.patient == f"src1-pat{int(it.name.split('_pat')[1][:2])}"
        assert it.width == 64 and it.height == 64
        assert (it.n_frames, it.fps is not None) == ((6, True) if it.kind == "video" else (1, False))
        assert isinstance(it.findings, Findings) and it.dataset == "pocus" and it.exam == it.patient
        no_score = {"severity"} if it.label == "pneumonia" else set()
        assert set(it.findings.known()) == {*FINDINGS, "severity"} - no_score
        assert it.license.startswith("CC0")
        assert not it.label_uncertain
    cov = next(it for it in idx if it.label == "covid")
    assert cov.findings.b_lines is True and cov.findings.a_lines is False and cov.severity == 2
    assert cov.findings.pleural_irregularity is True and cov.findings.consolidation is False
    reg = next(it for it in idx if it.label == "regular")
    assert reg.findings.a_lines is True and reg.findings.severity == 0 and reg.label_scope == "recording"
    pneu = next(it for it in idx if it.label == "pneumonia")
    assert pneu.findings.consolidation and pneu.findings.air_bronchogram and pneu.severity is None  # not 0
    assert (idx.abspath(cov)).is_file()


def test_public_layout_any_case_and_no_metadata(public_demo, tmp_path):
    root = _copy(public_demo, tmp_path)
    (root / "dataset_metadata.csv").unlink()
    (root / "pocus_videos").rename(root / "POCUS_Videos")
    (root / "POCUS_Videos" / "convex").rename(root / "POCUS_Videos" / "Convex")
    idx = index_dataset(root)
    assert len(idx) == 18 and idx.metadata is None
    for it in idx:
        assert it.label_from == "filename" and it.group_from == "filename"
        assert it.patient.startswith("file-demopat")
        assert it.label == label_from_filename(it.name)[0]
        assert it.findings == Findings() and it.findings.known() == [] and it.severity is None
    assert {it.probe for it in idx if it.path.startswith("POCUS_Videos/Convex/")} == {"convex"}
    # clips and image of one patient share the group, patients differ
    groups = {}
    for it in idx:
        groups.setdefault(it.patient, set()).add(it.name.split("_")[2])
    assert all(len(v) == 1 for v in groups.values()) and len(groups) == 6


def test_metadata_label_disagreement_and_uncertain(public_demo, tmp_path):
    root = _copy(public_demo, tmp_path)
    meta = root / "dataset_metadata.csv"
    rows = list(csv.DictReader(open(meta, newline="")))
    victim = next(r for r in rows if r["Filename"].startswith("Cov_"))
    victim["Label"] = "regular"
    with open(meta, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    # an uncertain file without a metadata row
    shutil.copy(_a_clip(root), root / "pocus_videos" / "convex" / "Vir_or_Pneu_extra_clip1.mp4")
    idx = index_dataset(root)
    it = next(i for i in idx if i.name.startswith(victim["Filename"] + "."))
    assert it.label == "regular" and it.label_from == "metadata"
    assert any(victim["Filename"] in w and "disagreement" in w and "file name says covid" in w for w in idx.warnings)
    unc = next(i for i in idx if i.name.startswith("Vir_or_Pneu"))
    assert unc.label == "viral" and unc.label_uncertain and unc.label_from == "filename"
    assert unc.patient == "file-extra" and unc.group_from == "filename"
    assert any("Vir_or_Pneu_extra_clip1.mp4: no row in dataset_metadata.csv" in w for w in idx.warnings)
    assert "label disagreement" in idx.summary() and "uncertain labels: 1" in idx.summary()


def test_shifted_metadata_row_and_bad_findings(public_demo, tmp_path):
    """The public metadata has rows whose Framerate..Patient ID columns are shifted one to the right."""
    root = _copy(public_demo, tmp_path)
    meta = root / "dataset_metadata.csv"
    header = next(csv.reader(open(meta, newline="")))
    rows = list(csv.DictReader(open(meta, newline="")))
    header = header + ["Lung /abdomen interface"]
    i_pat = header.index("Patient ID / Name")
    header.insert(i_pat + 1, header.pop())  # the column after Patient ID, as in the public file
    shifted = rows[0]
    shifted.update({"Framerate": "", "Resolution": "10", "Length (frames)": "64x64",
                    "Patient ID / Name": "40", "Lung /abdomen interface": "77"})
    rows[1]["Effusion"] = "https://example.org/x.zip"
    with open(meta, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    idx = index_dataset(root)
    it = next(i for i in idx if i.name.startswith(shifted["Filename"] + "."))
    assert it.patient == "src1-pat77"
    assert it.findings.known() == ["severity"]  # the shifted row's findings are unknown, never 0
    assert any("shifted" in w and shifted["Filename"] in w for w in idx.warnings)
    it2 = next(i for i in idx if i.name.startswith(rows[1]["Filename"] + "."))
    assert it2.findings.effusion is None and it2.findings.b_lines is not None
    assert any("'Effusion' is 'https://example.org/x.zip'" in w and "left unknown" in w for w in idx.warnings)


# ---------------------------------------------------------------------------- folders layout


def test_folders_layout(folders_demo):
    idx = index_dataset(folders_demo)
    assert idx.layout == "class folders" and len(idx) == 12 and not idx.warnings
    for it in idx:
        assert it.label == it.path.split("/")[0] and it.label_from == "folder"
        assert it.probe == "unknown" and it.kind == "video"
        assert it.patient == "file-" + it.name.split("_")[0] + it.name.split("_")[1]  # file-demopat01
    assert len(idx.patients()) == 6


def test_folders_synonyms_case_patient_and_probe_folders(folders_demo, tmp_path):
    root = _copy(folders_demo, tmp_path)
    (root / "regular").rename(root / "Healthy")
    (root / "covid").rename(root / "COVID-19")
    # a patient folder with a probe folder inside a class folder
    pdir = root / "pneumonia" / "Convex" / "patient_A"
    pdir.mkdir(parents=True)
    for p in sorted((root / "pneumonia").glob("demo_pat03_*.mp4")):
        p.rename(pdir / p.name)
    idx = index_dataset(root)
    assert sorted({it.label for it in idx}) == ["covid", "pneumonia", "regular"]
    assert sum(it.label == "regular" for it in idx) == 4
    moved = [it for it in idx if "patient_A" in it.path]
    assert len(moved) == 2
    assert all(it.patient == "dir-patient_A" and it.group_from == "folder" and it.probe == "convex" for it in moved)


def test_folder_label_vs_prefix_disagreement(folders_demo, tmp_path):
    root = _copy(folders_demo, tmp_path)
    shutil.copy(_a_clip(root / "covid"), root / "covid" / "Reg_misfiled_clip1.mp4")
    idx = index_dataset(root)
    it = next(i for i in idx if i.name == "Reg_misfiled_clip1.mp4")
    assert it.label == "covid" and it.label_from == "folder"
    assert any("Reg_misfiled_clip1.mp4: label disagreement: folder says covid, file name says regular" in w
               for w in idx.warnings)


# ------------------------------------------------------------------------------------ filters


def test_filters(public_demo):
    idx = index_dataset(public_demo, probes="convex", classes=["covid", "regular"])
    assert len(idx) == 6 and {it.probe for it in idx} == {"convex"}
    assert {it.label for it in idx} == {"covid", "regular"}
    assert "filter: probe convex; classes covid,regular" in idx.summary()
    full = index_dataset(public_demo)
    assert [it.path for it in full.filter("linear", "pneumonia")] == \
        [it.path for it in full if it.probe == "linear" and it.label == "pneumonia"]
    assert len(index_dataset(public_demo, probes="unknown")) == 0
    with pytest.raises(PocovidError, match="unknown probe 'sector'"):
        index_dataset(public_demo, probes="sector")


# ---------------------------------------------------------------------------- failures, errors


def _add_bad_files(root: Path) -> None:
    d = root / "pocus_videos" / "convex"
    (d / "Cov_empty_clip1.mp4").write_bytes(b"")
    (d / "Pneu_text_clip1.mp4").write_text("this is not a video\n")
    (d / "Reg_weird_clip1.xyz").write_bytes(b"\x00\x01")
    (d / "Cov_nolabel.txt").write_text("ignored")
    (root / "README.md").write_text("# demo\n")
    (root / "notes.csv").write_text("a,b\n1,2\n")
    (d / ".DS_Store").write_bytes(b"\x00")


def test_unreadable_files_listed_rest_indexed(public_demo, tmp_path):
    root = _copy(public_demo, tmp_path)
    _add_bad_files(root)
    shutil.copy(_a_clip(root), root / "pocus_videos" / "convex" / "unlabelled_clip1.mp4")
    idx = index_dataset(root)
    assert len(idx) == 18
    fails = dict(idx.failures)
    assert fails["pocus_videos/convex/Cov_empty_clip1.mp4"] == "empty file (0 bytes)"
    assert "not a readable video" in fails["pocus_videos/convex/Pneu_text_clip1.mp4"]
    assert fails["pocus_videos/convex/unlabelled_clip1.mp4"].startswith("no label")
    assert dict(idx.skipped) == {"pocus_videos/convex/Reg_weird_clip1.xyz": "unsupported file type '.xyz'"}
    s = idx.summary()
    assert "failures (not indexed): 3" in s and "Cov_empty_clip1.mp4: empty file (0 bytes)" in s
    assert "skipped (not recordings): 1" in s and "README" not in s and "notes.csv" not in s
    assert all("\n" not in r for _, r in idx.failures)


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PocovidError, match="empty: no recordings found"):
        index_dataset(tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("x")
    with pytest.raises(PocovidError, match="docs: no recordings found"):
        index_dataset(tmp_path / "docs")
    with pytest.raises(PocovidError, match="no such folder"):
        index_dataset(tmp_path / "missing")


def test_cli_empty_folder_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "pocovid.cli", "data", "index", str(tmp_path / "empty")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "empty: no recordings found" in lines[0]


def test_cli_index_summary_out_and_strict(public_demo, tmp_path):
    root = _copy(public_demo, tmp_path)
    _add_bad_files(root)
    out = tmp_path / "index.csv"
    r = runner.invoke(app, ["data", "index", str(root), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "covid" in r.output and "total" in r.output and "Cov_empty_clip1.mp4: empty file" in r.output
    assert out.is_file() and len(read_index(out)) == 18
    r = runner.invoke(app, ["data", "index", str(root), "--strict"])
    assert r.exit_code == 1 and "--strict" in r.output
    r = runner.invoke(app, ["data", "index", str(root), "--probe", "convex", "--classes", "covid"])
    assert r.exit_code == 0 and "filter: probe convex; classes covid" in r.output


def test_cli_nothing_indexed_is_non_zero(tmp_path):
    d = tmp_path / "bad" / "covid"
    d.mkdir(parents=True)
    (d / "a.mp4").write_bytes(b"")
    (d / "b.png").write_text("not an image")
    r = runner.invoke(app, ["data", "index", str(tmp_path / "bad")])
    assert r.exit_code == 1
    assert "a.mp4: empty file (0 bytes)" in r.output and "nothing could be indexed" in r.output


# ------------------------------------------------------------------------------------ CSV


def test_index_csv_round_trip(public_demo, tmp_path):
    idx = index_dataset(public_demo)
    p = write_index(idx, tmp_path / "sub" / "index.csv")
    back = read_index(p)
    assert back.root == idx.root
    assert back.items == idx.items
    other = read_index(p, root=tmp_path)
    assert other.root == tmp_path.resolve() and other.items == idx.items
    with pytest.raises(PocovidError, match="not a pocovid index"):
        (tmp_path / "x.csv").write_text("a,b\n1,2\n")
        read_index(tmp_path / "x.csv")
    header = p.read_text().splitlines()[0].split(",")
    assert header == INDEX_COLUMNS and "consolidation" in header and "pleural_irregularity" in header


def test_index_csv_of_an_older_pocovid_still_reads(public_demo, tmp_path):
    """Index CSVs written before the findings vocabulary: `consolidations`, `pleural_irregularities`,
    no dataset / zone / exam columns."""
    rows = list(csv.DictReader(open(write_index(index_dataset(public_demo), tmp_path / "new.csv"), newline="")))
    old_cols = ["path", "kind", "probe", "label", "label_uncertain", "patient", "fps", "n_frames", "width", "height",
                "format", "source", "severity", "license", "b_lines", "a_lines", "consolidations", "effusion",
                "pleural_irregularities", "air_bronchogram", "label_from", "group_from", "root"]
    with open(tmp_path / "old.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old_cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, r.get({"consolidations": "consolidation",
                                           "pleural_irregularities": "pleural_irregularity"}.get(c, c), ""))
                        for c in old_cols})
    back = read_index(tmp_path / "old.csv")
    cov = next(it for it in back if it.label == "covid")
    assert cov.findings.pleural_irregularity is True and cov.findings.consolidation is False
    assert cov.exam == cov.patient and cov.dataset == ""


# ------------------------------------------------------------------------------------ real data


@pytest.mark.realdata
def test_real_index(shared_pocus):
    idx = index_dataset(shared_pocus)
    assert len(idx) == 112 and not idx.failures and not idx.skipped
    meta = {r["Filename"]: r for r in csv.DictReader(open(shared_pocus / "dataset_metadata.csv", newline=""))}
    for it in idx:
        stem = it.name.rsplit(".", 1)[0]
        assert it.label == label_from_filename(it.name)[0] == normalize_label(meta[stem]["Label"]), it.path
        assert it.probe == it.path.split("/")[1].lower() == meta[stem]["Probe"], it.path
        assert it.kind == meta[stem]["Type"].lower(), it.path
        assert it.group_from == "metadata" and it.patient.startswith("src")
    c = idx.counts()
    assert sum(v for (lab, pr, k), v in c.items() if pr == "convex" and k == "video") == 85
    assert c[("covid", "convex", "video")] == 18 and c[("regular", "convex", "video")] == 39
    # one patient, two labels (Source 2 patient 37), kept as one group
    p37 = {it.label for it in idx if it.patient == "src2-pat37"}
    assert p37 == {"pneumonia", "regular"}


@pytest.mark.realdata
def test_real_subfolder_uses_parent_metadata(shared_pocus):
    idx = index_dataset(shared_pocus / "pocus_videos" / "convex")
    assert len(idx) == 85 and idx.metadata.endswith("dataset_metadata.csv")
    assert all(it.group_from == "metadata" and it.probe == "convex" for it in idx)
    assert not any("name no file" in w for w in idx.warnings)


# ------------------------------------------------------------------------------------ hostile files


def _class_dir(tmp_path: Path, src: Path) -> Path:
    """DIR/covid/ with one good clip copied from `src`."""
    d = tmp_path / "ds" / "covid"
    d.mkdir(parents=True)
    shutil.copy(_a_clip(src), d / "Cov_good_clip1.mp4")
    return d


def _undecodable_dicom(path: Path) -> Path:
    """A JPEG DICOM cine whose header reads but whose frames do not decode (JPEG markers erased)."""
    frames = [np.full((32, 32, 3), 40 * i, np.uint8) for i in range(4)]
    write_dicom(path, frames, 10.0, compressed=True)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"\xff\xd8", b"\x00\x00"))
    return path


def test_verify_decodes_frames(folders_demo, tmp_path):
    d = _class_dir(tmp_path, folders_demo)
    _undecodable_dicom(d / "Cov_broken_frames.dcm")
    idx = index_dataset(d.parent)
    assert not idx.verified and len(idx) == 2 and not idx.failures  # the header reads
    assert "check: headers only" in idx.summary()
    idx = index_dataset(d.parent, verify=True)
    assert idx.verified and [it.name for it in idx] == ["Cov_good_clip1.mp4"]
    (p, reason), = idx.failures
    assert p == "covid/Cov_broken_frames.dcm" and reason.startswith("frames do not decode") and "\n" not in reason
    assert "check: verified by decoding" in idx.summary()
    r = runner.invoke(app, ["data", "index", str(d.parent), "--verify", "--strict"])
    assert r.exit_code == 1 and "verified by decoding" in r.output and "Cov_broken_frames.dcm: frames" in r.output


def test_unreadable_subfolder_is_reported(folders_demo, tmp_path, monkeypatch):
    d = _class_dir(tmp_path, folders_demo)
    locked = d.parent / "regular"
    locked.mkdir()
    shutil.copy(_a_clip(folders_demo), locked / "Reg_hidden_clip1.mp4")
    real_scandir = os.scandir

    def scandir(path="."):  # root ignores permissions: simulate what chmod 000 does for a user
        if Path(os.fspath(path)) == locked.resolve():
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    idx = index_dataset(d.parent)
    assert len(idx) == 1
    assert idx.failures == [("regular/", "cannot read folder (permission denied); its files are not indexed")]
    assert "regular/: cannot read folder (permission denied)" in idx.summary()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads a chmod 000 folder")
def test_unreadable_subfolder_chmod(folders_demo, tmp_path):
    d = _class_dir(tmp_path, folders_demo)
    locked = d.parent / "regular"
    locked.mkdir()
    locked.chmod(0)
    try:
        idx = index_dataset(d.parent)
    finally:
        locked.chmod(0o755)
    assert len(idx) == 1 and idx.failures[0][0] == "regular/" and "permission denied" in idx.failures[0][1]


def test_non_utf8_file_name_indexes_and_writes_a_whole_csv(folders_demo, tmp_path):
    d = _class_dir(tmp_path, folders_demo)
    raw = os.fsencode(d) + b"/Cov_caf\xe9_clip2.mp4"  # Latin-1 bytes: not UTF-8
    shutil.copy(_a_clip(folders_demo), os.fsdecode(raw))
    with open(os.fsdecode(os.fsencode(d) + b"/Cov_bad_\xff.mp4"), "w") as f:
        f.write("not a video")
    idx = index_dataset(d.parent)
    assert len(idx) == 2 and [p for p, _ in idx.failures] == [os.fsdecode(b"covid/Cov_bad_\xff.mp4")]
    assert "covid/Cov_bad_\\xff.mp4: not a readable video" in idx.summary()
    idx.summary().encode("utf-8")  # printable
    out = write_index(idx, tmp_path / "index.csv")
    text = out.read_bytes().decode("utf-8")  # valid UTF-8 throughout
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 2 and "covid/Cov_caf\\xe9_clip2.mp4" in {r["path"] for r in rows}
    back = read_index(out)
    assert back.items == idx.items and all(back.abspath(it).is_file() for it in back)
    r = subprocess.run([sys.executable, "-m", "pocovid.cli", "data", "index", str(d.parent), "--out",
                        str(tmp_path / "cli.csv")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "Cov_bad_\\xff.mp4: not a readable video" in r.stdout
    assert len(read_index(tmp_path / "cli.csv")) == 2


def test_non_utf8_name_in_analyze_summary(folders_demo, model_file, tmp_path):
    from pocovid.analysis import AnalysisConfig
    from pocovid.analysis.batch import analyze_files

    src = os.fsdecode(os.fsencode(tmp_path) + b"/Cov_caf\xe9.mp4")
    shutil.copy(_a_clip(folders_demo), src)
    missing = os.fsdecode(os.fsencode(tmp_path) + b"/gone_\xff.mp4")
    batch = analyze_files([src, missing], str(model_file), tmp_path / "out", AnalysisConfig(rate_hz=3, report=False))
    text = (tmp_path / "out" / "summary.csv").read_bytes().decode("utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["Cov_caf\\xe9.mp4", "gone_\\xff.mp4"]
    assert rows[0]["status"] == "ok" and rows[1]["status"] == "failed" and "gone_\\xff.mp4" in rows[1]["error"]
    assert len(batch.entries) == 2 and batch.entries[0].result.file.endswith("Cov_caf\\xe9.mp4")
    json.loads((batch.entries[0].folder / "result.json").read_text())  # valid JSON, the name escaped


@pytest.mark.parametrize("name, head", [("zeros.dcm", b"\0" * 128 + b"DICM"), ("zeros", b"\0" * 128 + b"DICM"),
                                        ("dicm_first.dcm", b"DICM")])
def test_dicm_and_zeros_finishes_fast(folders_demo, tmp_path, name, head):
    d = _class_dir(tmp_path, folders_demo)
    p = d / name
    with open(p, "wb") as f:
        f.write(head)
        f.truncate(8 << 30)  # 8 GiB of zeros (a sparse file: nothing is written)
    t0 = time.monotonic()
    idx = index_dataset(d.parent)
    assert time.monotonic() - t0 < 20
    assert len(idx) == 1
    (path, reason), = idx.failures
    assert path == f"covid/{name}" and "\n" not in reason
    assert "DICOM header does not end" in reason or "not a DICOM file" in reason


def test_malformed_or_missing_metadata_indexes_what_it_can(public_demo, tmp_path):
    root = _copy(public_demo, tmp_path)
    (root / "dataset_metadata.csv").write_bytes(b"Filename,Label\n\"Cov_x" + b"a" * (1 << 18) + b"\",x\n")
    idx = index_dataset(root)  # a field over csv's limit: csv.Error
    assert len(idx) == 18 and idx.metadata is None
    assert any("dataset_metadata.csv: not a readable CSV file" in w and "ignored" in w for w in idx.warnings)
    (root / "dataset_metadata.csv").unlink()
    assert len(index_dataset(root)) == 18
