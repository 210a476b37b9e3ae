"""`pocovid exam`: a patient's lung zones analysed at once. Zone parsing (names, CSV, --zones,
unassigned), the LUS score and its maximum, missing zones, several clips per zone, withheld clips left
out of the verdict, the exam combination read from the model file, exam.json against its schema,
exam.html, the CLI. Generated data only (pocovid.phantom), with a small model with findings and
severity heads; one test on a real COVID-BLUES patient (marked realdata)."""

import json
import re
import time
from types import SimpleNamespace

import jsonschema
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pocovid.analysis.bedside import ExamConfig, _zone, analyze_exam, exam_method_of, lus_of, verdict_of
from pocovid.analysis.display import SEVERITY_COLOURS
from pocovid.analysis.exam_result import ExamClip, ExamResult, exam_schema
from pocovid.analysis.result import Severity
from pocovid.analysis.zones import BLUE_ZONES, assign_zones, exam_files, zone_from_name
from pocovid.cli import app
from pocovid.errors import PocovidError
from pocovid.models.exam import exam_probabilities, fit_exam_combiner

torch.set_num_threads(1)  # the CI machine has 2 cores, shared
runner = CliRunner()
CLASSES = ["covid", "pneumonia", "regular"]
FINDINGS = ["b_lines", "a_lines", "consolidation", "effusion", "pleural_irregularity"]


# ----------------------------------------------------------------------------------- zones


@pytest.mark.parametrize("name, zone, patient", [
    ("patient_10_L1.mp4", "L1", "10"), ("patient_7_r3_2.mp4", "R3", "7"), ("Patient-12-L2.avi", "L2", "12"),
    ("scan_L2.mp4", "L2", None), ("R3-second.dcm", "R3", None), ("L1_R2.mp4", None, None),
    ("clip.mp4", None, None), ("patient_4.mp4", None, "4"), ("L12.mp4", None, None)])
def test_zone_from_file_names(name, zone, patient):
    assert zone_from_name(name) == (zone, patient)


def test_zones_from_names_csv_and_option(tmp_path):
    files = [tmp_path / n for n in ("patient_3_R1.mp4", "b.mp4", "c.mp4")]
    by_name = assign_zones(files)
    assert [(z.zone, z.source) for z in by_name] == [("R1", "name"), (None, None), (None, None)]
    assert by_name[0].patient == "3"
    csv_path = tmp_path / "zones.csv"
    csv_path.write_text("file,zone\nb.mp4,l2\nc,-\nnot_here.mp4,R3\n", encoding="utf-8")
    by_csv = assign_zones(files, zones_csv=csv_path)  # the CSV by name or stem; others from their name
    assert [(z.zone, z.source) for z in by_csv] == [("R1", "name"), ("L2", "csv"), (None, None)]
    by_option = assign_zones(files, zones="L3, r2, unassigned")
    assert [(z.zone, z.source) for z in by_option] == [("L3", "option"), ("R2", "option"), (None, None)]
    assert [z.zone for z in assign_zones(files, zones=["R1", None, "-"])] == ["R1", None, None]


@pytest.mark.parametrize("kwargs, message", [
    ({"zones": "R1,R2"}, "2 zone(s) for 3 recording(s)"),
    ({"zones": "R1,R2,X9"}, "unknown zone 'X9'"),
    ({"zones_csv": "bad.csv"}, "columns file,zone"),
    ({"zones_csv": "missing.csv"}, "cannot read the zones CSV")])
def test_bad_zones_are_one_line_errors(tmp_path, kwargs, message):
    (tmp_path / "bad.csv").write_text("name,where\na,b\n", encoding="utf-8")
    if "zones_csv" in kwargs:
        kwargs = {"zones_csv": tmp_path / kwargs["zones_csv"]}
    with pytest.raises(PocovidError, match=re.escape(message)) as e:
        assign_zones([tmp_path / n for n in ("a.mp4", "b.mp4", "c.mp4")], **kwargs)
    assert "\n" not in str(e.value)


def test_exam_files_from_folders_one_patient(tmp_path):
    from pocovid.phantom.blues import write_blues_dataset

    root = write_blues_dataset(tmp_path / "blues", classes=("covid", "regular"), zones=("L1", "R1"))
    with pytest.raises(PocovidError, match="2 patients .*--patient"):
        exam_files([root])  # the lus_videos folder of a BLUES root: two patients
    got = exam_files([root], patient="2")
    assert [p.name for p in got] == ["patient_2_L1.mp4", "patient_2_R1.mp4"]
    assert [p.name for p in exam_files([root / "lus_videos" / "patient_1_R1.mp4"])] == ["patient_1_R1.mp4"]
    with pytest.raises(PocovidError, match="no such file"):
        exam_files([tmp_path / "nothing.mp4"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PocovidError, match="no recordings in this folder"):
        exam_files([tmp_path / "empty"])
    with pytest.raises(PocovidError, match="no recording of patient 9"):
        exam_files([root], patient="9")


# ---------------------------------------------------------------------- zones, LUS, verdict


def _clip(file, zone, level=None, probs=(0.2, 0.1, 0.7), withheld=False, findings=None, status="ok"):
    sev = None if level is None else Severity(expected=level + 0.1, probabilities=[0.25] * 4, level=level)
    if status == "failed":
        return ExamClip(file=file, zone=zone, zone_source="name" if zone else None, status="failed",
                        error=f"{file}: broken")
    p = dict(zip(CLASSES, probs))
    return ExamClip(file=file, zone=zone, zone_source="name" if zone else None, status="ok", folder=file[:-4],
                    report=f"{file[:-4]}/report.html", label=None if withheld else max(p, key=p.get),
                    probabilities=p, withheld=withheld, counted=not withheld, findings=findings, severity=sev,
                    key_frame=f"{file[:-4]}/key_frame_1.png")


def test_zone_takes_the_worst_clip_and_the_highest_findings():
    clips = [_clip("a.mp4", "R1", 1, findings={"b_lines": 0.9, "a_lines": 0.2}),
             _clip("b.mp4", "R1", 2, findings={"b_lines": 0.3, "a_lines": 0.6}),
             _clip("c.mp4", "R1", 3, withheld=True, findings={"b_lines": 1.0, "a_lines": 1.0}),  # not counted
             _clip("d.mp4", "R2", status="failed")]
    r1 = _zone("R1", clips)
    assert r1.status == "scored" and r1.severity == 2 and r1.severity_clip == "b.mp4"
    assert r1.findings == {"b_lines": 0.9, "a_lines": 0.6}
    assert r1.key_frame == "b/key_frame_1.png" and r1.clips == ["a.mp4", "b.mp4", "c.mp4"]
    assert _zone("R2", clips).status == "not_scored" and _zone("R3", clips).status == "missing"


def test_lus_score_sums_zones_out_of_18_and_names_missing_ones():
    clips = [_clip("r1.mp4", "R1", 1), _clip("r2.mp4", "R2", 3), _clip("r2b.mp4", "R2", 0), _clip("l1.mp4", "L1", 2),
             _clip("l2.mp4", "L2", 0, withheld=True), _clip("x.mp4", None, 3)]
    lus = lus_of([_zone(z, clips) for z in BLUE_ZONES], clips=clips)
    assert lus.score == 1 + 3 + 2 and lus.max_possible == 18 and lus.n_zones == 6
    assert lus.score_expected == pytest.approx(1.5 * 3)  # mean expected severity of each scored zone's clips
    assert lus.zones_scored == ["R1", "R2", "L1"] and lus.zones_missing == ["R3", "L3"]
    assert lus.zones_not_scored == ["L2"] and not lus.complete
    full = lus_of([_zone(z, [_clip(f"{z}.mp4", z, 3) for z in BLUE_ZONES]) for z in BLUE_ZONES])
    assert full.score == 18 == full.max_possible and full.complete
    assert lus_of([_zone(z, [_clip("n.mp4", "R1")]) for z in BLUE_ZONES], has_severity=False).score is None


def _exam_model(method="logistic"):
    rng = np.random.default_rng(0)
    probs, exams, labels = [], [], {}
    for e in range(24):
        y = e % 3
        labels[f"e{e}"] = y
        for _ in range(6):
            p = rng.dirichlet(np.ones(3))
            p[y] += 1.0
            probs.append(p / p.sum())
            exams.append(f"e{e}")
    params = fit_exam_combiner(np.array(probs), np.array(exams), labels, CLASSES)
    exam = {"method": method, "selected_by": "lowest out-of-fold exam log loss"}
    if method == "logistic":
        exam["params"] = params
    return SimpleNamespace(classes=CLASSES, meta={"extra": {"exam": exam}}), params


def test_verdict_uses_the_model_files_exam_method_without_withheld_clips():
    model, params = _exam_model("logistic")
    assert exam_method_of(model)[:2] == ("logistic", params)
    clips = [_clip("r1.mp4", "R1", probs=(0.7, 0.1, 0.2)), _clip("r2.mp4", "R2", probs=(0.6, 0.2, 0.2)),
             _clip("l1.mp4", "L1", probs=(0.1, 0.1, 0.8)),
             _clip("l2.mp4", "L2", probs=(0.0, 1.0, 0.0), withheld=True), _clip("l3.mp4", "L3", status="failed")]
    v, why = verdict_of(clips, model)
    counted = np.array([[0.7, 0.1, 0.2], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])
    _, want = exam_probabilities(counted, ["x"] * 3, "logistic", classes=CLASSES, params=params)
    assert why is None and v.method == "logistic" and v.n_clips == 3
    assert np.allclose([v.probabilities[c] for c in CLASSES], want[0], atol=1e-4)
    assert v.label == CLASSES[int(np.argmax(want[0]))] and 0 <= v.uncertainty <= 1
    # the covid-looking zones drive a covid verdict; the healthy-looking one does not
    if v.label == "covid":
        assert {d.zone for d in v.drivers} <= {"R1", "R2"} and v.drivers
    # a model file without an exam method: the mean, and it says so
    plain = SimpleNamespace(classes=CLASSES, meta={"extra": {}})
    method, _, source = exam_method_of(plain)
    assert method == "mean" and "names no exam method" in source
    v2, _ = verdict_of(clips, plain)
    assert v2.probabilities["covid"] == pytest.approx(counted.mean(0)[0], abs=1e-4)


def test_verdict_reads_the_clips_signs_when_the_method_does():
    from pocovid.models import exam as exam_model

    if "logistic_signs" not in exam_model.EXAM_METHODS:
        pytest.skip("pocovid.models.exam has no logistic_signs method in this checkout")
    rng = np.random.default_rng(1)
    names = ["b_lines", "a_lines"]
    n = 60
    probs, f, sev = rng.dirichlet(np.ones(3), n), rng.uniform(0.05, 0.95, (n, 2)), rng.dirichlet(np.ones(4), n)
    exams = [f"e{i // 5}" for i in range(n)]
    params = fit_exam_combiner(probs, exams, {f"e{e}": e % 3 for e in range(n // 5)}, CLASSES, findings=f,
                               severity=sev, finding_names=names)
    model = SimpleNamespace(classes=CLASSES, findings=names,
                            meta={"extra": {"exam": {"method": "logistic_signs", "params": params}}})
    clips = [_clip(f"{z}.mp4", z, probs=probs[i], findings=dict(zip(names, f[i])))
             for i, z in enumerate(BLUE_ZONES)]
    for i, c in enumerate(clips):
        c.severity = Severity(expected=float(sev[i] @ np.arange(4)), probabilities=list(sev[i]), level=0)
    v, _ = verdict_of(clips, model)
    _, want = exam_probabilities(probs[:6], ["x"] * 6, "logistic_signs", classes=CLASSES, params=params,
                                 findings=f[:6], severity=sev[:6])
    assert v.method == "logistic_signs" and np.allclose([v.probabilities[c] for c in CLASSES], want[0], atol=1e-4)
    clips[0].findings = None  # a clip without signs: the plain mean, and the verdict says why
    v, _ = verdict_of(clips, model)
    assert v.method == "mean" and "needs findings and severity" in v.method_source


def test_no_verdict_when_every_clip_is_withheld():
    model, _ = _exam_model()
    v, why = verdict_of([_clip("a.mp4", "R1", withheld=True), _clip("b.mp4", "R2", status="failed")], model)
    assert v is None and "withheld" in why
    v, why = verdict_of([_clip("b.mp4", "R2", status="failed")], model)
    assert v is None and "no recording could be analysed" in why


def test_palette_is_sequential_and_not_red_green():
    lum = [0.2126 * int(c[1:3], 16) + 0.7152 * int(c[3:5], 16) + 0.0722 * int(c[5:7], 16) for c in SEVERITY_COLOURS]
    assert lum == sorted(lum, reverse=True)  # light (0) to dark (3): readable without hue


# -------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def mt_model_file(tmp_path_factory):
    """A small model with findings and severity heads (pretrained trunk, untrained heads: never clinical)
    and a logistic exam combination, saved as a model file."""
    from pocovid.models import create_model, save_model

    torch.manual_seed(0)
    m = create_model("efficientnet_lite0", CLASSES, n_heads=1, pretrained=True, adapter_channels=16,
                     findings=FINDINGS, severity_levels=4).eval()
    m.input_size = 64
    _, params = _exam_model()
    p = tmp_path_factory.mktemp("model") / "mt.pt"
    save_model(m, p, training_config={"size": 64, "rate_hz": None, "crop": True}, data_fingerprint="phantom",
               extra={"exam": {"method": "logistic", "selected_by": "test", "params": params}})
    return p


@pytest.fixture(scope="module")
def exam_dir(tmp_path_factory):
    """One phantom patient in COVID-BLUES' layout at L1, R1, R2 (L1 twice), a broken R3, an
    unassigned clip and a blank image (out of distribution)."""
    from pocovid.phantom import write_phantom
    from pocovid.phantom.blues import write_blues_dataset
    from pocovid.phantom.writers import write_image

    root = write_blues_dataset(tmp_path_factory.mktemp("exam") / "blues", classes=("covid",),
                               zones=("L1", "R1", "R2"), repeats=1, width=96, height=96, n_frames=4)
    videos = root / "lus_videos"
    (videos / "patient_1_R3.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    write_phantom(videos / "extra_clip.mp4", label="regular", width=96, height=96, n_frames=4, overlays=False)
    write_image(videos / "patient_1_L3.png", np.zeros((120, 160, 3), np.uint8))
    return videos


@pytest.fixture(scope="module")
def exam_run(exam_dir, mt_model_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    files = exam_files([exam_dir])
    t0 = time.perf_counter()
    exam = analyze_exam(files, str(mt_model_file), out, ExamConfig())
    return exam, out, time.perf_counter() - t0


def test_exam_end_to_end(exam_run):
    exam, out, _ = exam_run
    assert exam.patient == "1" and exam.protocol_zones == list(BLUE_ZONES)
    by_file = {c.file: c for c in exam.clips}
    assert set(by_file) == {"patient_1_L1.mp4", "patient_1_L1_2.mp4", "patient_1_R1.mp4", "patient_1_R2.mp4",
                            "patient_1_R3.mp4", "extra_clip.mp4", "patient_1_L3.png"}
    # the broken file is listed, named by its base name, and the rest are done
    assert by_file["patient_1_R3.mp4"].status == "failed" and len(exam.failures) == 1
    assert exam.failures[0].startswith("patient_1_R3.mp4: ") and "\n" not in exam.failures[0]
    assert str(out) not in exam.failures[0]
    # the blank image is withheld and counts toward nothing
    blank = by_file["patient_1_L3.png"]
    assert blank.withheld and not blank.counted and blank.label is None
    zones = {z.zone: z for z in exam.zones}
    assert zones["L1"].clips == ["patient_1_L1.mp4", "patient_1_L1_2.mp4"]
    assert zones["L1"].severity == max(by_file[f].severity.level for f in zones["L1"].clips)
    assert zones["R3"].status == "not_scored" and zones["L3"].status == "not_scored"
    assert zones["L2"].status == "missing"
    assert exam.unassigned == ["extra_clip.mp4"] and by_file["extra_clip.mp4"].counted
    assert exam.lus.max_possible == 18 and exam.lus.zones_missing == ["L2"]
    assert exam.lus.score == sum(zones[z].severity for z in ("L1", "R1", "R2"))
    # the verdict counts L1 x2, R1, R2 and the unassigned clip
    assert exam.verdict is not None and exam.verdict.n_clips == 5 and exam.verdict.method == "logistic"
    assert exam.review_recommended and any("not scanned: L2" in r for r in exam.review_reasons)
    # every clip analysed has its own result.json and report
    for c in exam.clips:
        if c.status == "ok":
            assert (out / c.folder / "result.json").is_file() and (out / c.report).is_file()
    for z in ("L1", "R1", "R2"):
        assert zones[z].key_frame and (out / zones[z].key_frame).is_file()


def test_exam_json_validates_against_the_schema(exam_run):
    exam, out, _ = exam_run
    data = json.loads((out / "exam.json").read_text(encoding="utf-8"))
    jsonschema.validate(data, exam_schema())
    assert data["schema_version"] == ExamResult.model_fields["schema_version"].default
    assert ExamResult.model_validate(data) == exam.model_copy(update={"timings": data["timings"]})
    text = json.dumps(data)
    assert str(out) not in text and "/lus_videos/" not in text  # base names and relative paths only


def test_exam_html_shows_diagram_table_verdict(exam_run):
    exam, out, _ = exam_run
    html = (out / "exam.html").read_text(encoding="utf-8")
    assert "<svg" in html and "patient's RIGHT" in html and "patient's LEFT" in html
    assert html.index("patient's RIGHT") < html.index("patient's LEFT")
    for z in BLUE_ZONES:
        assert f'data-zone="{z}"' in html
    # right lung on the viewer's left: R1's circle lies left of L1's
    cx = {z: float(re.search(rf'data-zone="{z}">\s*<title>[^<]*</title>\s*<circle cx="([\d.]+)"', html).group(1))
          for z in ("R1", "L1")}
    assert cx["R1"] < cx["L1"]
    assert f"{exam.lus.score}</span> / 18" in html and "not scanned" in html
    assert html.index("<svg") < html.index("<h2>Zones") < html.index("Exam diagnosis") < html.index("Each clip")
    assert "Most likely:" in html and "review recommended" in html
    assert not re.search(r"\bregular\b", html)  # the clinician's word: healthy
    assert not re.search(r"\d\.\d{4}", html)  # percentages, not decimals
    assert str(out) not in html and "lus_videos" not in html  # base names only
    assert 'href="patient_1_R1/report.html"' in html and 'src="patient_1_R1/key_frame_' in html
    assert "<script" not in html


def test_cli_exam(exam_dir, mt_model_file, tmp_path):
    out = tmp_path / "o"
    files = [str(exam_dir / n) for n in ("patient_1_R1.mp4", "patient_1_R2.mp4")]
    r = runner.invoke(app, ["exam", *files, "--model", str(mt_model_file), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "LUS score" in r.stdout and "/ 18" in r.stdout and "exam.html" in r.stdout
    assert (out / "exam.json").is_file() and (out / "exam.html").is_file()
    r = runner.invoke(app, ["exam", *files, "--model", str(mt_model_file), "--out", str(tmp_path / "j"), "--json",
                            "--zones", "L1,-"])
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert [c["zone"] for c in d["clips"]] == ["L1", None] and d["unassigned"] == ["patient_1_R2.mp4"]
    csv_path = tmp_path / "zones.csv"
    csv_path.write_text("file,zone\npatient_1_R1.mp4,L3\n/somewhere/private/ghost.mp4,R3\n", encoding="utf-8")
    r = runner.invoke(app, ["exam", *files, "--model", str(mt_model_file), "--out", str(tmp_path / "c"), "--json",
                            "--zones-csv", str(csv_path), "--quiet"])
    d = json.loads(r.stdout)
    assert r.exit_code == 0 and [(c["zone"], c["zone_source"]) for c in d["clips"]] == [("L3", "csv"), ("R2", "name")]
    assert any("ghost.mp4" in n for n in d["notes"]) and "private" not in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--zones", "R1"], "1 zone(s) for 2 recording(s)"),
    (["--zones", "R1,Q7"], "unknown zone"),
    (["--zones-csv", "nope.csv"], "cannot read the zones CSV"),
    (["--review-below", "2"], "review_below")])
def test_cli_exam_bad_input_is_one_line_exit_1(exam_dir, mt_model_file, tmp_path, args, message):
    files = [str(exam_dir / n) for n in ("patient_1_R1.mp4", "patient_1_R2.mp4")]
    r = runner.invoke(app, ["exam", *files, "--model", str(mt_model_file), "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 1
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "exam.json").exists()


def test_cli_exam_missing_input_and_failed_clip(exam_dir, mt_model_file, tmp_path):
    r = runner.invoke(app, ["exam", str(tmp_path / "none.mp4"), "--model", str(mt_model_file)])
    assert r.exit_code == 1 and "no such file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # a broken recording: the exam is still written, the failure listed on stderr, exit 1
    files = [str(exam_dir / n) for n in ("patient_1_R1.mp4", "patient_1_R3.mp4")]
    r = runner.invoke(app, ["exam", *files, "--model", str(mt_model_file), "--out", str(tmp_path / "o"), "--quiet"])
    assert r.exit_code == 1 and "patient_1_R3.mp4" in r.stderr
    assert json.loads((tmp_path / "o" / "exam.json").read_text())["failures"]


def test_schema_exam_option():
    r = runner.invoke(app, ["schema", "--exam"])
    assert r.exit_code == 0 and json.loads(r.stdout)["title"] == "ExamResult"
    assert json.loads(runner.invoke(app, ["schema"]).stdout)["title"] == "AnalysisResult"


# ------------------------------------------------------------------------------ real data


@pytest.mark.realdata
def test_exam_on_one_real_blues_patient(shared_blues, tmp_path):
    """One COVID-BLUES patient's six points with the bundled model: six zones scored, a LUS score
    out of 18 and a verdict."""
    files = exam_files([shared_blues / "lus_videos"], patient="10")
    assert len(files) == 6
    exam = analyze_exam(files, "default", tmp_path, ExamConfig())
    assert [z.zone for z in exam.zones] == list(BLUE_ZONES)
    assert all(z.status == "scored" for z in exam.zones) and exam.lus.complete
    assert 0 <= exam.lus.score <= 18 and exam.lus.max_possible == 18 and not exam.failures
    assert exam.verdict is not None and exam.verdict.n_clips == 6
    from pocovid.inference import load

    assert exam.verdict.method == load("default").meta["extra"]["exam"]["method"]
    assert (tmp_path / "exam.html").is_file()
    jsonschema.validate(json.loads((tmp_path / "exam.json").read_text(encoding="utf-8")), exam_schema())


def test_exam_method_across_sites_is_the_lowest_mean_log_loss_over_the_runs(monkeypatch):
    """The bundled exam method is chosen on cross-site runs: the mean of each method's out-of-fold
    exam log loss over them; a method one run lacks is not a candidate."""
    from pocovid.training import cv

    losses = {"lodo": {"mean": 0.9, "max": 0.8, "logistic": 2.7},
              "loso": {"mean": 0.7, "max": 0.9, "logistic": 0.1, "logistic_signs": 0.05}}
    monkeypatch.setattr(cv, "exam_from_run", lambda run: {"oof_log_loss": losses[run]})
    method, mean = cv.exam_method_across_sites(["lodo", "loso"])
    assert method == "mean" and mean == pytest.approx({"mean": 0.8, "max": 0.85, "logistic": 1.4})
    assert cv.exam_method_across_sites(["loso"])[0] == "logistic_signs"
    with pytest.raises(ValueError):
        cv.exam_method_across_sites([])
