"""Exams in the web service (/api/exams): a patient's recordings named by zone, uploaded at once, each
analysed as a job, then concluded as `pocovid exam` concludes (zones, LUS score, verdict); a broken
file listed, a non-recording refused, zones from names or given, moved later; the report and the
recordings' artifacts served from the exam's folder and nothing else; deletion; the database migration;
an exam concluded after a restart. The real analysis with a small phantom-trained model (findings and
severity heads untrained: outputs to show, never clinical)."""

from __future__ import annotations

import re
import sqlite3
import time
import warnings
from urllib.parse import urljoin

import pytest

pytest.importorskip("fastapi", reason="the web service needs the 'serve' extra (pip install -e '.[test]')")
pytest.importorskip("python_multipart", reason="the web service needs python-multipart")
pytest.importorskip("httpx", reason="the API tests need httpx")

import torch  # noqa: E402

torch.set_num_threads(1)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from pocovid.analysis.exam_result import ExamResult  # noqa: E402
from pocovid.phantom import write_phantom  # noqa: E402
from pocovid.server import ServerConfig, create_app  # noqa: E402
from pocovid.server.db import Database  # noqa: E402

TOKEN = "exam-token-for-tests-0123"
ZONES = ("L1", "L2", "L3", "R1", "R2", "R3")
FINDINGS = ("b_lines", "a_lines", "consolidation", "effusion", "pleural_irregularity")


@pytest.fixture(scope="module")
def exam_model_file(tmp_path_factory):
    """The quick phantom model with findings and severity heads, saved as a model file."""
    pytest.importorskip("pocovid.analysis", reason="pocovid.analysis is not in this checkout")
    from pocovid.testing import quick_phantom_model, save_quick_model

    m = quick_phantom_model(size=96, n_heads=2, steps=40, findings=FINDINGS, severity_levels=4)
    return save_quick_model(m, tmp_path_factory.mktemp("model") / "phantom_exam.pt")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Six small phantom clips named by their BLUE point (as the quick model's training clips look, so
    the out-of-distribution guard takes them), as bytes."""
    d = tmp_path_factory.mktemp("clips")
    out = {}
    for i, z in enumerate(ZONES):
        p = d / f"patient_7_{z}.mp4"
        write_phantom(p, label="covid" if z in ("L3", "R3") else "regular", n_frames=4, width=256, height=224,
                      fps=10.0, seed=i, overlays=True, probe="convex")
        out[p.name] = p.read_bytes()
    return out


def client_for(data_dir, model_file, **cfg) -> TestClient:
    from pocovid.server.jobs import real_analyze

    app = create_app(ServerConfig(data_dir=data_dir, model=str(model_file), overlay_video=False, **cfg),
                     analyze=real_analyze)
    return TestClient(app, base_url="http://localhost", headers={"X-Requested-With": "pocovid"})


def wait_exam(c, url, timeout=240.0) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        e = c.get(url).json()
        if e["status"] in ("done", "failed"):
            return e
        time.sleep(0.1)
    raise AssertionError(f"exam still {e['status']} after {timeout} s: {e['counts']}")


def post_files(c, url, files: dict[str, bytes], **data):
    return c.post(url, files=[("file", (name, body, "application/octet-stream")) for name, body in files.items()],
                  data=data)


def test_exam_flow(tmp_path, exam_model_file, clips):
    data = tmp_path / "srv"
    broken = {"patient_7_R3_2.mp4": clips["patient_7_R3.mp4"][:3000]}  # sniffed as MP4, cut short
    with client_for(data, exam_model_file, token=TOKEN) as c:
        r = c.post("/api/exams", json={"patient": "p-7"})
        assert r.status_code == 201, r.text
        ex = r.json()
        assert ex["status"] == "open" and r.headers["location"] == ex["url"]
        assert c.get(ex["url"]).json()["n_recordings"] == 0
        # seven files at once, one not a recording: refused and listed, the rest added with their zones
        r = post_files(c, ex["recordings_url"], {**clips, **broken, "notes.txt": b"not a recording at all"})
        assert r.status_code == 202, r.text
        up = r.json()
        assert len(up["added"]) == 7 and [x["index"] for x in up["refused"]] == [7]
        assert up["refused"][0]["name"] == "notes.txt" and "unsupported file type" in up["refused"][0]["reason"]
        assert [a["zone"] for a in up["added"]] == [*ZONES, "R3"]
        assert {a["zone_source"] for a in up["added"]} == {"name"} and up["names"][0] == "patient_7_L1.mp4"
        e = wait_exam(c, ex["url"])
        assert e["status"] == "done", e
        assert e["counts"] == {"queued": 0, "running": 0, "done": 6, "failed": 1} and e["progress"] == 1.0
        res = ExamResult.model_validate(e["result"])
        assert res.patient == "p-7" and res.lus.max_possible == 18 and res.lus.n_zones == 6
        assert res.lus.score is not None and e["lus_score"] == res.lus.score and e["lus_max"] == 18
        assert res.lus.complete and res.lus.zones_scored == ["R1", "R2", "R3", "L1", "L2", "L3"]
        assert res.verdict is not None and res.verdict.label in ("covid", "pneumonia", "regular")
        assert e["diagnosis"] == res.verdict.label and e["probability"] == res.verdict.probabilities[res.verdict.label]
        assert res.verdict.n_clips == 6 and res.model == "phantom_exam.pt"
        # the broken file: listed with its one-line reason, named by its stored name only
        failed = [x for x in e["recordings"] if x["status"] == "failed"]
        assert len(failed) == 1 and failed[0]["zone"] == "R3" and failed[0]["error"]
        assert res.failures == [f"{failed[0]['file']}: {failed[0]['error']}"] and "\n" not in res.failures[0]
        assert any("could not be analysed" in x for x in res.review_reasons) and e["review_recommended"]
        zones = {z.zone: z for z in res.zones}
        assert zones["R3"].clips == [x["file"] for x in e["recordings"] if x["zone"] == "R3"]
        assert all(z.severity is not None and z.key_frame for z in res.zones)
        # the report and every file it links are served from the exam's folder
        rep = c.get(e["links"]["report"])
        assert rep.status_code == 200 and "<svg" in rep.text and "script-src 'none'" in rep.headers[
            "content-security-policy"]
        links = set(re.findall(r'(?:href|src)="([^"#]+)"', rep.text))
        assert links and all(not link.startswith(("http", "/")) for link in links)
        for link in links:
            assert c.get(urljoin(e["links"]["report"], link)).status_code == 200, link
        assert c.get(e["links"]["exam_json"]).json()["lus"]["score"] == res.lus.score
        ok = next(x for x in e["recordings"] if x["status"] == "done")
        assert c.get(ok["key_frame"]).headers["content-type"] == "image/png"
        assert c.get(ok["report"]).status_code == 200
        # each recording is an analysis of its own, with its exam and zone; the history of single analyses
        # does not list them
        a = c.get(ok["url"]).json()
        assert a["exam"] == ex["id"] and a["zone"] == ok["zone"] and a["status"] == "done"
        assert c.get(a["links"]["report"]).status_code == 200
        assert c.get("/api/analyses").json()["total"] == 0
        hist = c.get("/api/exams").json()
        assert hist["total"] == 1 and hist["items"][0]["diagnosis"] == res.verdict.label
        assert hist["items"][0]["n_recordings"] == 7
        # nothing outside the exam's list, no way out of its folder
        base = f"{ex['url']}/files/"
        rid = ok["id"]
        for bad in ("../../pocovid.sqlite3", "..%2F..%2Fpocovid.sqlite3", "%2Fetc%2Fpasswd", "/etc/passwd",
                    f"{rid}/../../../pocovid.sqlite3", f"{rid}/..%2F..%2F..%2Fpocovid.sqlite3", f"{rid}/nope.png",
                    f"{failed[0]['id']}/report.html", "exam.html/../../x", f"{rid}", "uploads/x.mp4",
                    f"../{rid}/report.html"):
            assert c.get(base + bad).status_code == 404, bad
        assert c.get("/api/exams/../../etc/passwd").status_code == 404
        assert c.get("/api/exams/0123456789abcdef").status_code == 404
        assert c.get(f"/api/exams/0123456789abcdef/files/{rid}/report.html").status_code == 404
        # move a recording to another zone (JSON body): concluded again at once; a bad zone is 422
        r = c.patch(f"{ex['recordings_url']}/{failed[0]['id']}", json={"zone": "-"})
        assert r.status_code == 200, r.text
        moved = r.json()
        assert moved["status"] == "done" and [x["zone"] for x in moved["recordings"]].count(None) == 1
        assert moved["result"]["unassigned"] == [failed[0]["file"]]
        assert c.patch(f"{ex['recordings_url']}/{rid}", json={"zone": "L9"}).status_code == 422
        assert c.patch(f"{ex['recordings_url']}/0123456789abcdef", json={"zone": "L1"}).status_code == 404
        # the client's file names are kept nowhere
        root = c.app.state.storage.root
        assert not any("patient_7" in p.name for p in root.rglob("*"))
        assert b"patient_7" not in c.app.state.storage.db_path.read_bytes()
        # a recording goes with its exam; the exam needs the token
        assert c.delete(f"/api/analyses/{rid}", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 409
        assert c.delete(ex["url"]).status_code == 401
        assert c.delete(ex["url"], headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 204
        assert c.get(ex["url"]).status_code == 404 and c.get(ok["url"]).status_code == 404
        assert not any((root / "exams").iterdir()) and not any((root / "uploads").iterdir())


def test_zones_given_every_clip_withheld_and_a_restart(tmp_path, exam_model_file, clips):
    from pocovid import testing
    from pocovid.phantom import write_image

    photos = {}
    for name in ("astronaut", "coffee"):
        write_image(tmp_path / f"{name}.png", testing.natural_images()[name])
        photos[f"{name}.png"] = (tmp_path / f"{name}.png").read_bytes()
    data = tmp_path / "srv"
    with client_for(data, exam_model_file) as c:
        ex = c.post("/api/exams").json()  # no body: no patient, BLUE
        assert c.post("/api/exams", json={"patient": "x/../y"}).status_code == 422
        assert c.post("/api/exams", json={"protocol": "other"}).status_code == 422
        # zones given in order ('-': none) override the names; their count must match
        assert post_files(c, ex["recordings_url"], photos, zones="L1").status_code == 422
        assert post_files(c, ex["recordings_url"], photos, zones="L1,Q7").status_code == 422
        r = post_files(c, ex["recordings_url"], photos, zones="l2, -")
        assert r.status_code == 202, r.text
        assert [(a["zone"], a["zone_source"]) for a in r.json()["added"]] == [("L2", "option"), (None, None)]
        assert c.post(ex["recordings_url"], files=[("file", ("a.txt", b"text", "text/plain"))]).status_code == 415
        e = wait_exam(c, ex["url"])
        assert e["status"] == "done", e
        # not lung ultrasound: each withheld, no verdict at all
        assert all(x["withheld"] and x["diagnosis"] is None for x in e["recordings"])
        assert e["result"]["verdict"] is None and e["diagnosis"] is None and "withheld" in e["no_verdict"]
        assert e["lus_score"] is None and e["result"]["lus"]["zones_not_scored"] == ["L2"]
        # a change the server did not conclude before it stopped is concluded when it starts again
        rid = e["recordings"][0]["id"]
        c.app.state.db.set_zone(rid, "R1", "option")
    assert Database(data / "pocovid.sqlite3").get_exam(ex["id"])["status"] == "running"
    with client_for(data, exam_model_file) as c:
        e = wait_exam(c, ex["url"], timeout=60)
        assert e["status"] == "done" and e["result"]["lus"]["zones_not_scored"] == ["R1"]


def test_a_version_1_database_is_migrated(tmp_path):
    from pocovid.server import db as dbmod

    path = tmp_path / "pocovid.sqlite3"
    con = sqlite3.connect(path)
    con.executescript(dbmod._SCHEMA)
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO analyses (id, created, updated, status, kind, format, size, upload) "
                "VALUES ('0123456789abcdef', 1, 1, 'done', 'video', 'mp4', 10, 'uploads/0123456789abcdef.mp4')")
    con.commit()
    con.close()
    db = Database(path)
    assert db.schema_version() == dbmod.SCHEMA_VERSION == 2
    total, rows = db.list_analyses()
    assert total == 1 and rows[0]["exam"] is None and rows[0]["zone"] is None
    db.add_exam("fedcba9876543210", patient="p1")
    assert db.list_exams()[0] == 1
    with pytest.raises(KeyError):  # an exam deleted meanwhile: its recording is not stored
        db.add_analysis("00000000000000aa", kind="video", format="mp4", size=1, upload="uploads/x.mp4",
                        deidentified=False, exam="00000000000000bb")
    assert db.get_analysis("00000000000000aa") is None
    db.close()
    assert Database(path).schema_version() == 2  # opened again: nothing more to do
