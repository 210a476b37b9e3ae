"""The web service (pocovid.server): API, uploads, jobs, persistence, tokens, de-identification,
contributions and their export; one real uvicorn process on a loopback port with the real analysis.

Most tests inject a small stub analysis (create_app(analyze=...)) so they test the service, not the
model; `TestRealAnalysis` and `test_real_server_process` run `pocovid.analysis.analyze_recording`
with a small phantom-trained model built here."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web service needs the 'serve' extra (pip install -e '.[test]')")
pytest.importorskip("python_multipart", reason="the web service needs python-multipart")
httpx = pytest.importorskip("httpx", reason="the API tests need httpx")

import torch  # noqa: E402

torch.set_num_threads(1)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from pocovid.analysis.result import SCHEMA_VERSION, AnalysisResult, result_schema  # noqa: E402
from pocovid.errors import PocovidError  # noqa: E402
from pocovid.models import InputConfig  # noqa: E402
from pocovid.phantom import write_dicom, write_phantom, write_video  # noqa: E402
from pocovid.server import ServerConfig, create_app  # noqa: E402
from pocovid.server.db import Database  # noqa: E402
from pocovid.server.storage import Storage, sniff_media  # noqa: E402

TOKEN = "s3cret-token-for-tests"
#: What the page sends with every request that changes data (CSRF protection, pocovid.server.guard).
PAGE_HEADERS = {"X-Requested-With": "pocovid"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def Client(app, **kw) -> TestClient:
    """A test client as the page is one: Host localhost, the CSRF header on every request."""
    kw.setdefault("base_url", "http://localhost")
    kw["headers"] = {**PAGE_HEADERS, **kw.get("headers", {})}
    return TestClient(app, **kw)


# ------------------------------------------------------------------------------------------ helpers

class FakeModel:
    """Stands in for a FrameClassifier where the stub analysis does not need one (what
    `pocovid.models.model_summary` reads, and the model file's metadata)."""

    backbone_name = "efficientnet_lite0"
    classes = ["covid", "pneumonia", "regular"]
    n_heads = 2
    input_config = InputConfig(size=96)
    meta = {"backbone": "efficientnet_lite0", "pocovid_version": "0.1.0", "format_version": 1,
            "created": "2026-01-01T00:00:00+00:00", "data_fingerprint": "abc",
            "metrics": {"video": {"balanced_accuracy": 0.87, "n": 40}, "frame": {"balanced_accuracy": 0.8}},
            "training_config": {"size": 96}}

    def eval(self):
        return self


PROBS = {"covid": 0.8, "pneumonia": 0.15, "regular": 0.05}


def make_result(path, *, kind="video", n_frames=6, fps=10.0, overlay="overlay.mp4", key_images=("key_frame_1.png",),
                **update) -> AnalysisResult:
    """A declared result as the real analysis writes it (covid at 0.8, in distribution), with the
    real analysis' artifact names; `update` replaces top-level fields."""
    frames = [{"index": i, "time_s": round(i / (fps or 1.0), 3), "probabilities": PROBS, "member_std": 0.01}
              for i in range(n_frames)]
    key_frames = [{"rank": r, "index": 0, "time_s": 0.0, "label": "covid", "image": name, "probabilities": PROBS,
                   "evidence": 0.8, "heat_inside_region": 0.9} for r, name in enumerate(key_images, 1)]
    data = {
        "file": str(path), "model": "stub", "pocovid_version": "0.1.0", "created": "2026-01-01T00:00:00+00:00",
        "notice": "Decision support for trained clinicians, not a diagnosis.",
        "model_info": {"backbone": "efficientnet_lite0", "classes": list(PROBS), "n_heads": 2, "input_size": 96},
        "prediction": {"label": "covid", "probabilities": PROBS, "withheld": False, "aggregation": "mean",
                       "frames_disagree": False, "disagreement": [], "class_share": {"covid": 1.0}},
        "uncertainty": {"score": 0.01, "method": "member_std", "threshold": 0.1, "threshold_source": "default",
                        "n_members": 2, "description": "ensemble disagreement", "components": {"member_std": 0.01}},
        "review_recommended": False, "review_reasons": [], "out_of_distribution": False,
        "ood": {"reasons": [], "weak_cues": [], "cues": {}},
        "region": {"kind": "fan", "path": "/etc/passwd"},  # not an artifact field: never read as a file
        "media": {"kind": kind, "format": "mp4" if kind == "video" else "png", "fps": fps, "n_frames": n_frames,
                  "width": 96, "height": 80, "duration_s": n_frames / (fps or 1.0)},
        "sampling": {"rate_hz": None, "max_frames": None, "n_frames_analyzed": n_frames, "input_size": 96,
                     "crop": True, "grey": True},
        "explainer": "cam", "explainer_description": "class activation map", "key_frame_min_gap_s": 0.5,
        "frames": frames, "key_frames": key_frames,
        "timeline": "timeline.png", "report": "report.html", "overlay_video": overlay,
    }
    return AnalysisResult.model_validate({**data, **update})


def stub_analyze(path, model, out_dir, config=None, progress=None):
    """Reads the recording with pocovid's reader (so unreadable files fail as in the real analysis)
    and writes artifacts with the real analysis' names; returns a declared result (`make_result`)
    whose second key frame names a file outside its folder (never served)."""
    from PIL import Image

    from pocovid.media import probe, read_frames

    info = probe(path)
    frames = read_frames(path)
    if progress:
        progress(0.5, "classify")
    out = Path(out_dir)
    Image.fromarray(frames[0].image).save(out / "key_frame_1.png")
    Image.fromarray(frames[-1].image).save(out / "timeline.png")
    (out / "report.html").write_text("<!doctype html><title>report</title><p>stub report</p>", encoding="utf-8")
    overlay = None
    if info.kind == "video":
        write_video(out / "overlay.mp4", np.stack([f.image for f in frames]), info.fps or 10.0)
        overlay = "overlay.mp4"
    return make_result(path, kind=info.kind, n_frames=len(frames), fps=info.fps, overlay=overlay,
                       key_images=("key_frame_1.png", "../pocovid.sqlite3"))


def make_app(data_dir, analyze=stub_analyze, model=None, isolate=None, **cfg):
    return create_app(ServerConfig(data_dir=data_dir, **cfg), analyze=analyze, model=model or FakeModel(),
                      isolate=isolate)


def wait_for(client, id_, states=("done", "failed"), timeout=60.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        a = client.get(f"/api/analyses/{id_}").json()
        if a["status"] in states:
            return a
        time.sleep(0.05)
    raise AssertionError(f"analysis {id_} still {a['status']} after {timeout} s")


def upload(client, data: bytes, name="clip.mp4", field="file"):
    return client.post("/api/analyses", files={field: (name, io.BytesIO(data), "application/octet-stream")})


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Small recordings of each kind, as bytes."""
    d = tmp_path_factory.mktemp("media")
    out = {}
    for name, kw in {"clip.mp4": {}, "clip.avi": {}, "still.png": {}, "still.jpg": {}}.items():
        write_phantom(d / name, label="covid", n_frames=6, fps=10, width=96, height=80, seed=1, **kw)
        out[name] = (d / name).read_bytes()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 64, 80, 3), dtype=np.uint8)
    write_dicom(d / "cine.dcm", frames, 10, patient_name="DOE^JANE^Q", patient_id="MRN-77731",
                OtherPatientNames="ROE^JANE", PatientMotherBirthName="DOE^MARY", IssuerOfPatientID="CITYHOSP",
                ImageComments="patient Jane Doe, bed 12", RequestingPhysician="WHO^DR")
    out["cine.dcm"] = (d / "cine.dcm").read_bytes()
    return out


@pytest.fixture()
def client(tmp_path):
    with Client(make_app(tmp_path / "srv")) as c:
        yield c


# ------------------------------------------------------------------------------------------ sniffing

def test_type_is_sniffed_from_content_not_name():
    cases = {
        b"\x00" * 128 + b"DICM" + b"\x00" * 8: "dicom",
        b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00": "mp4",
        b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00": "mov",
        b"RIFF\x10\x00\x00\x00AVI LIST": "avi",
        b"GIF89a\x10\x00": "gif",
        b"\x89PNG\r\n\x1a\n\x00\x00": "png",
        b"\xff\xd8\xff\xe0\x00\x10JFIF": "jpeg",
        b"BM" + b"\x00" * 12 + (40).to_bytes(4, "little"): "bmp",
        b"II*\x00\x08\x00\x00\x00": "tiff",
        b"\x00\x00\x01\xba\x44\x00": "mpeg",
        b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm": "webm",
        b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska": "mkv",
    }
    for head, name in cases.items():
        m = sniff_media(head)
        assert m is not None and m.name == name, (head[:12], m)
    for bad in (b"", b"hello world, not a video", b"%PDF-1.7\n", b"PK\x03\x04zip", b"\x00\x00\x00\x18ftypheic",
                b"RIFF\x10\x00\x00\x00WEBPVP8 ", b"BMxx"):
        assert sniff_media(bad) is None, bad


# ------------------------------------------------------------------------------------------ API

def test_out_of_distribution_result_is_never_summarised_as_a_diagnosis():
    from pocovid.server.results import summarize_result

    ok = make_result("x.mp4")
    res = ok.model_copy(update={"out_of_distribution": True, "review_recommended": True,
                                "prediction": ok.prediction.model_copy(update={"withheld": True})})
    s = summarize_result(res)
    assert s["diagnosis"] is None and s["probability"] is None and s["withheld"] and s["not_lung"]
    s = summarize_result(ok)
    assert s["diagnosis"] == "covid" and s["probability"] == 0.8 and s["withheld"] is False
    assert s["not_lung"] is False and s["review_recommended"] is False
    assert set(summarize_result(None).values()) == {None}


def test_artifacts_are_the_declared_fields_only(tmp_path):
    """A long reason string (a blank recording's out-of-distribution reason) is not a file name to
    try: only report, timeline, overlay_video and key_frames[*].image are, when they exist."""
    from pocovid.server.jobs import artifact_names

    for name in ("report.html", "timeline.png", "key_frame_1.png", "result.json", "stray.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    reason = ("the recording does not look like lung ultrasound: " + "dark " * 60)[:293]  # > NAME_MAX
    result = make_result("notes.txt", overlay=None, review_reasons=[reason], notice=reason,
                         ood={"reasons": [reason], "weak_cues": [], "cues": {}},
                         key_images=("key_frame_1.png", "missing.png", "../result.json", "/etc/passwd", "x" * 300,
                                     reason))
    assert artifact_names(result, tmp_path) == ["key_frame_1.png", "report.html", "result.json", "timeline.png"]


def test_upload_poll_result_and_artifacts(client, media):
    r = upload(client, media["clip.mp4"], name="Doe_Jane_lung.mp4")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and len(body["id"]) == 16 and r.headers["location"] == body["url"]
    a = wait_for(client, body["id"])
    assert a["status"] == "done", a
    assert a["progress"] == 1.0 and a["error"] is None and a["kind"] == "video" and a["format"] == "mp4"
    assert a["diagnosis"] == "covid" and a["probability"] == pytest.approx(0.8)
    assert a["review_recommended"] is False and a["not_lung"] is False and a["withheld"] is False
    res = a["result"]
    assert res["prediction"]["label"] == "covid" and len(res["frames"]) == 6
    assert res["file"] == f"{body['id']}.mp4"  # the stored name, never a server path or the client's name
    # only the files the result names (and result.json) are listed and served
    assert set(a["files"]) == {"key_frame_1.png", "timeline.png", "report.html", "overlay.mp4", "result.json"}
    links = a["links"]
    assert links["overlay_video"].endswith("/files/overlay.mp4") and links["report"].endswith("/files/report.html")
    assert links["timeline"].endswith("/files/timeline.png") and links["key_frames"][0].endswith("key_frame_1.png")
    for name, url in a["files"].items():
        f = client.get(url)
        assert f.status_code == 200 and f.content, name
    assert client.get(links["overlay_video"]).headers["content-type"] == "video/mp4"
    rep = client.get(links["report"])
    assert "script-src 'none'" in rep.headers["content-security-policy"]
    assert json.loads(client.get(a["files"]["result.json"]).content)["prediction"]["label"] == "covid"
    src = client.get(f"/api/analyses/{body['id']}/source")
    assert src.status_code == 200 and src.content == media["clip.mp4"]
    # no traversal, nothing outside the result's list
    base = f"/api/analyses/{body['id']}/files/"
    for bad in ("../../pocovid.sqlite3", "..%2F..%2Fpocovid.sqlite3", "%2Fetc%2Fpasswd", "/etc/passwd",
                "nope.png", "result.json/../../x"):
        assert client.get(base + bad).status_code == 404, bad
    assert client.get("/api/analyses/../../etc/passwd").status_code == 404
    assert client.get("/api/analyses/0123456789abcdef").status_code == 404
    assert client.get("/api/analyses/not-an-id/files/result.json").status_code == 404
    # the client's file name is kept nowhere
    root = client.app.state.storage.root
    assert not any("Doe" in p.name for p in root.rglob("*"))
    assert b"Doe_Jane" not in client.app.state.storage.db_path.read_bytes()


def test_image_and_other_containers(client, media):
    ids = {}
    for name in ("still.png", "still.jpg", "clip.avi"):
        r = upload(client, media[name], name="x.bin")  # the name says nothing; the content decides
        assert r.status_code == 202, (name, r.text)
        ids[name] = r.json()["id"]
    for name, id_ in ids.items():
        a = wait_for(client, id_)
        assert a["status"] == "done", (name, a)
    png = client.get(f"/api/analyses/{ids['still.png']}").json()
    assert png["kind"] == "image" and png["format"] == "png" and png["links"]["overlay_video"] is None
    assert client.get(f"/api/analyses/{ids['clip.avi']}").json()["format"] == "avi"


def test_history_is_paged_newest_first(client, media):
    ids = [upload(client, media["still.png"]).json()["id"] for _ in range(3)]
    for i in ids:
        wait_for(client, i)
    page = client.get("/api/analyses?limit=2").json()
    assert page["total"] == 3 and page["offset"] == 0 and page["limit"] == 2
    assert [it["id"] for it in page["items"]] == ids[::-1][:2]
    assert page["items"][0]["diagnosis"] == "covid" and page["items"][0]["status"] == "done"
    rest = client.get("/api/analyses?offset=2&limit=2").json()
    assert [it["id"] for it in rest["items"]] == [ids[0]]
    for bad in ("limit=0", "limit=101", "offset=-1", "limit=x"):
        r = client.get(f"/api/analyses?{bad}")
        assert r.status_code == 422 and r.json()["detail"], bad


def test_health_model_page_and_docs_work_offline(client):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["workers"] == 1 and h["max_upload_mb"] == 200 and h["token_required"] is False
    m = client.get("/api/model").json()
    assert m["classes"] == ["covid", "pneumonia", "regular"] and m["version"] == "0.1.0"
    assert m["metrics"]["video"]["balanced_accuracy"] == 0.87 and m["backbone"] == "efficientnet_lite0"
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "not a diagnosis" in page.text
    static = Path(__file__).resolve().parents[1] / "src" / "pocovid" / "server" / "static"
    for f in static.iterdir():  # no CDN, no external resource of any kind
        text = f.read_text(encoding="utf-8").replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name, not a fetch
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, f.name
        assert client.get(f"/static/{f.name}").status_code == 200
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn." not in docs.text and "/offline-docs/swagger-ui-bundle.js" in docs.text
    assert client.get("/offline-docs/swagger-ui-bundle.js").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/api/analyses", "/api/analyses/{analysis_id}", "/api/analyses/{analysis_id}/files/{name}",
                 "/api/health", "/api/model", "/api/contributions", "/api/contributions/{contribution_id}/accept"):
        assert path in spec["paths"], path
    body = spec["paths"]["/api/analyses"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body


def test_the_result_is_declared_schema_endpoint_and_openapi(tmp_path, media):
    """`result` is the declared AnalysisResult: /openapi.json documents its shape,
    GET /api/schema/result gives its JSON Schema (no token needed), and what is stored and served
    validates back into it."""
    with Client(make_app(tmp_path, token=TOKEN)) as c:
        r = c.get("/api/schema/result")
        assert r.status_code == 200 and r.json() == result_schema()
        assert r.json()["properties"]["schema_version"]["default"] == SCHEMA_VERSION
        spec = c.get("/openapi.json").json()
        assert spec["paths"]["/api/schema/result"]["get"]["tags"] == ["analyses"]
        schemas = spec["components"]["schemas"]
        status_result = json.dumps(schemas["AnalysisStatus"]["properties"]["result"])
        assert "#/components/schemas/AnalysisResult" in status_result
        assert {"prediction", "uncertainty", "frames", "key_frames", "schema_version"} <= set(
            schemas["AnalysisResult"]["properties"])
        a = wait_for(c, upload(c, media["clip.mp4"]).json()["id"])
        assert a["status"] == "done", a
        res = AnalysisResult.model_validate(a["result"])
        assert res.schema_version == SCHEMA_VERSION and res.file == f"{a['id']}.mp4"
        on_disk = AnalysisResult.model_validate(json.loads(c.get(a["files"]["result.json"]).content))
        assert on_disk == res


def test_the_page_gets_the_reports_words_and_colours(client):
    """One palette (Okabe-Ito), one heat map, one set of words: GET /api/display gives the page what
    the report and the images use (pocovid.analysis.display)."""
    from pocovid.analysis.display import OKABE_ITO, class_colours, clinical_name, display_spec
    from pocovid.analysis.exam_report import lung_diagram

    r = client.get("/api/display")
    assert r.status_code == 200
    d = r.json()
    assert d.pop("lung_diagram") == lung_diagram()  # the exam's diagram, as exam.html draws it
    assert d == display_spec(FakeModel.classes)
    assert d["class_colours"] == class_colours(FakeModel.classes)
    assert set(d["class_colours"].values()) <= set(OKABE_ITO.values())
    assert d["class_names"]["regular"] == clinical_name("regular") == "healthy"
    assert d["heatmap"]["name"] == "viridis" and len(d["heatmap"]["stops"]) > 2
    assert d["severity_words"][2] == "moderate"


def test_a_stored_result_of_version_3_still_reads_back(client, media):
    """A result written before schema 4 (no playback_video, full_screen, uncertainty.summary)
    validates back with defaults, so older analyses keep their result and diagnosis."""
    id_ = upload(client, media["still.png"]).json()["id"]
    assert wait_for(client, id_)["status"] == "done"
    old = make_result("x.png").to_json() | {"schema_version": 3}
    for k in ("playback_video", "full_screen"):
        del old[k]
    del old["uncertainty"]["summary"]
    assert client.app.state.db.update_analysis(id_, result=old)
    a = client.get(f"/api/analyses/{id_}").json()
    assert a["result"] is not None and a["result"]["schema_version"] == 3 and a["diagnosis"] == "covid"
    assert a["links"]["source_video"] is None


def test_a_stored_result_of_another_schema_version_is_shown_without_it(client, media):
    """A row written by an older pocovid (its result does not validate): the status says so in
    `error` with `result: null` and no diagnosis, never a 500; its files are still listed."""
    id_ = upload(client, media["still.png"]).json()["id"]
    assert wait_for(client, id_)["status"] == "done"
    old = {"schema_version": 1, "file": "x.png", "model": "stub", "report": "report.html",
           "prediction": {"label": "covid", "probabilities": {"covid": 0.8}, "withheld": False},
           "review_recommended": False, "out_of_distribution": False, "key_frames": []}
    assert client.app.state.db.update_analysis(id_, result=old)
    r = client.get(f"/api/analyses/{id_}")
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["status"] == "done" and a["result"] is None and a["diagnosis"] is None
    assert "schema_version 1" in a["error"] and f"schema_version {SCHEMA_VERSION}" in a["error"]
    assert "result.json" in a["files"] and a["links"]["result_json"] and a["links"]["report"] is None
    page = client.get("/api/analyses")
    assert page.status_code == 200
    item = next(it for it in page.json()["items"] if it["id"] == id_)
    assert item["diagnosis"] is None and "schema_version 1" in item["error"]


def test_an_analysis_must_return_the_declared_result(tmp_path, media):
    """The job runner takes an AnalysisResult only: a plain dict fails the job with a reason."""
    def returns_a_dict(path, model, out_dir, config=None, progress=None):
        return stub_analyze(path, model, out_dir, config, progress).to_json()

    with Client(make_app(tmp_path, analyze=returns_a_dict)) as c:
        a = wait_for(c, upload(c, media["still.png"]).json()["id"])
        assert a["status"] == "failed" and "TypeError" in a["error"] and a["result"] is None


def test_model_that_cannot_load_gives_503_and_failed_jobs(tmp_path, media):
    def loader(spec):
        raise PocovidError(f"{spec}: no such model file")

    app = create_app(ServerConfig(data_dir=tmp_path, model="missing.pt"), analyze=stub_analyze, model_loader=loader)
    with Client(app) as c:
        r = c.get("/api/model")
        assert r.status_code == 503 and "no such model file" in r.json()["detail"]
        a = wait_for(c, upload(c, media["still.png"]).json()["id"])
        assert a["status"] == "failed" and "no such model file" in a["error"]
        assert c.get("/api/health").json()["model_error"]


# ------------------------------------------------------------------------------------------ bad uploads

def _multipart(data: bytes, boundary="b0undary", field="file") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"x\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()


class _StreamingRequest:
    """What receive_form reads of a request: headers and the body as chunks (counted as consumed)."""

    def __init__(self, body: bytes, chunk: int, content_length: bool = False):
        self.headers = {"content-type": "multipart/form-data; boundary=b0undary"}
        if content_length:
            self.headers["content-length"] = str(len(body))
        self.body, self.chunk, self.consumed = body, chunk, 0

    async def stream(self):
        for i in range(0, len(self.body), self.chunk):
            self.consumed += 1
            yield self.body[i:i + self.chunk]


def test_size_limit_is_enforced_while_the_body_streams_in(tmp_path, media):
    import asyncio

    from pocovid.server.uploads import UploadError, receive_form

    st = Storage(tmp_path)
    limit = 50_000
    big = _multipart(media["clip.mp4"][:64] + os.urandom(1_000_000))
    req = _StreamingRequest(big, 4096)
    with pytest.raises(UploadError) as e:
        asyncio.run(receive_form(req, st, max_file_bytes=limit))
    assert e.value.status == 413
    n_chunks = -(-len(big) // 4096)
    assert req.consumed <= limit // 4096 + 2 < n_chunks  # stopped right after the limit, not at the end
    assert list(st.tmp.iterdir()) == []  # the partial file is gone
    # a Content-Length past the limit is refused before any of the body is read
    req = _StreamingRequest(big, 4096, content_length=True)
    with pytest.raises(UploadError) as e:
        asyncio.run(receive_form(req, st, max_file_bytes=limit))
    assert e.value.status == 413 and req.consumed == 0
    # the type is refused as soon as the first bytes show it
    req = _StreamingRequest(_multipart(b"%PDF-1.7\n" + os.urandom(500_000)), 4096)
    with pytest.raises(UploadError) as e:
        asyncio.run(receive_form(req, st, max_file_bytes=10**7))
    assert e.value.status == 415 and req.consumed <= 2
    # within the limit: the file arrives whole
    ok = _StreamingRequest(_multipart(media["still.png"]), 1000)
    form = asyncio.run(receive_form(ok, st, max_file_bytes=limit))
    assert form.file.media.name == "png" and form.file.path.read_bytes() == media["still.png"]


def test_bad_uploads_get_clear_4xx(tmp_path, media):
    with Client(make_app(tmp_path / "srv", max_upload_mb=0.05)) as c:  # 52 kB
        big = media["clip.mp4"][:64] + os.urandom(200_000)
        r = upload(c, big)
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        assert upload(c, b"just some text, not a recording", name="scan.mp4").status_code == 415
        assert upload(c, b"%PDF-1.7\n" + b"x" * 500, name="scan.dcm").status_code == 415
        r = upload(c, b"", name="empty.mp4")
        assert r.status_code == 400 and "empty" in r.json()["detail"]
        r = upload(c, media["still.png"], field="other")
        assert r.status_code == 400 and "no file" in r.json()["detail"]
        r = c.post("/api/analyses", json={"file": "x"})
        assert r.status_code == 400 and "multipart" in r.json()["detail"]
        r = c.post("/api/analyses", content=_multipart(media["still.png"])[:-30],
                   headers={"content-type": "multipart/form-data; boundary=b0undary"})
        assert r.status_code == 400 and "incomplete" in r.json()["detail"]
        r = c.post("/api/analyses", content=b"x" * 100,
                   headers={"content-type": "multipart/form-data; boundary=b0undary", "content-length": str(10**10)})
        assert r.status_code == 413
        # a truncated video is accepted (its type is right) and its job fails with the reader's reason
        data = media["clip.mp4"]
        r = upload(c, data[: len(data) // 2])
        assert r.status_code == 202
        a = wait_for(c, r.json()["id"])
        assert a["status"] == "failed" and "not a readable video" in a["error"]
        assert str(c.app.state.storage.root) not in a["error"] and "uploads/" not in a["error"]
        # nothing of the refused uploads stays: no rows, no files
        assert c.get("/api/analyses").json()["total"] == 1
        st = c.app.state.storage
        assert list(st.tmp.iterdir()) == [] and len(list(st.uploads.iterdir())) == 1


# ------------------------------------------------------------------------------------------ workers

class Gate:
    """A stub analysis that holds until released (reporting progress meanwhile)."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.running = 0
        self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, path, model, out_dir, config=None, progress=None):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        self.started.set()
        try:
            while not self.release.wait(0.02):
                progress(0.3, "classify")
            return stub_analyze(path, model, out_dir, config, progress)
        finally:
            with self.lock:
                self.running -= 1


def test_jobs_run_off_the_request_path_in_a_bounded_pool(tmp_path, media):
    gate = Gate()
    with Client(make_app(tmp_path, analyze=gate, workers=2)) as c:
        ids = [upload(c, media["still.png"]).json()["id"] for _ in range(4)]
        assert gate.started.wait(10)
        t0 = time.time()
        h = c.get("/api/health").json()  # answers while analyses run
        assert time.time() - t0 < 1.0
        time.sleep(0.2)
        counts = c.get("/api/health").json()["analyses"]
        assert counts["running"] == 2 and counts["queued"] == 2, counts
        running = [c.get(f"/api/analyses/{i}").json() for i in ids]
        assert any(a["status"] == "running" and a["progress"] == pytest.approx(0.3) and a["stage"] == "classify"
                   for a in running)
        assert h["status"] == "ok"
        gate.release.set()
        for i in ids:
            assert wait_for(c, i)["status"] == "done"
    assert gate.peak == 2


def test_delete_removes_everything_and_stops_a_running_job(tmp_path, media):
    gate = Gate()
    with Client(make_app(tmp_path, analyze=gate, token=TOKEN), headers=AUTH) as c:
        running = upload(c, media["clip.mp4"]).json()["id"]
        assert gate.started.wait(10)
        r = c.delete(f"/api/analyses/{running}")
        assert r.status_code == 204
        assert c.get(f"/api/analyses/{running}").status_code == 404
        gate.release.set()
        done = upload(c, media["still.png"]).json()["id"]
        wait_for(c, done)
        assert c.delete(f"/api/analyses/{done}").status_code == 204
        assert c.delete(f"/api/analyses/{done}").status_code == 404
        st = c.app.state.storage
        time.sleep(0.2)
        assert list(st.uploads.iterdir()) == [] and list(st.analyses.iterdir()) == []


# ------------------------------------------------------------------------------------------ restart

def test_restart_keeps_history_and_recovers_cut_off_jobs(tmp_path, media):
    data = tmp_path / "srv"
    with Client(make_app(data)) as c:
        done = upload(c, media["still.png"]).json()["id"]
        wait_for(c, done)
        ids = [upload(c, media["still.png"]).json()["id"] for _ in range(2)]
        for i in ids:
            wait_for(c, i)
    # as after a crash: two jobs were running (one already started twice), one was queued
    db = Database(Storage(data).db_path)
    db.update_analysis(ids[0], status="running", attempts=1, result=None, files=[])
    db.update_analysis(ids[1], status="running", attempts=2, result=None, files=[])
    db.close()
    with Client(make_app(data, max_attempts=2)) as c:
        hist = c.get("/api/analyses").json()
        assert hist["total"] == 3
        assert wait_for(c, done)["status"] == "done"
        again = wait_for(c, ids[0])
        assert again["status"] == "done" and again["attempts"] == 2 and again["diagnosis"] == "covid"
        gave_up = c.get(f"/api/analyses/{ids[1]}").json()
        assert gave_up["status"] == "failed" and "interrupted" in gave_up["error"]


def test_clean_shutdown_puts_running_jobs_back_in_the_queue(tmp_path, media):
    gate = Gate()
    data = tmp_path / "srv"
    with Client(make_app(data, analyze=gate)) as c:
        id_ = upload(c, media["still.png"]).json()["id"]
        assert gate.started.wait(10)
    row = Database(Storage(data).db_path).get_analysis(id_)
    assert row["status"] == "queued" and row["attempts"] == 0
    with Client(make_app(data)) as c:
        assert wait_for(c, id_)["status"] == "done"


# ------------------------------------------------------------------------------------------ tokens

def test_token_protects_delete_and_contributions_admin(tmp_path, media):
    with Client(make_app(tmp_path, token=TOKEN)) as c:
        id_ = upload(c, media["still.png"]).json()["id"]
        wait_for(c, id_)
        cid = _contribute(c, media["still.png"]).json()["id"]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        wrong = {"Authorization": "Bearer nope"}
        calls = [("DELETE", f"/api/analyses/{id_}"), ("GET", "/api/contributions"),
                 ("GET", f"/api/contributions/{cid}/file"), ("POST", f"/api/contributions/{cid}/accept"),
                 ("POST", f"/api/contributions/{cid}/reject")]
        for method, url in calls:
            r = c.request(method, url)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (method, url)
            assert c.request(method, url, headers=wrong).status_code == 403, (method, url)
            assert c.request(method, url, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert c.get("/api/contributions", headers=auth).json()["total"] == 1
        assert c.post(f"/api/contributions/{cid}/accept", headers=auth).json()["status"] == "accepted"
        assert c.delete(f"/api/analyses/{id_}", headers=auth).status_code == 204
        assert c.get("/api/health").json()["token_required"] is True
        # reading and uploading need no token
        assert c.get("/api/analyses").status_code == 200


def test_without_a_token_admin_answers_nobody_not_even_loopback(tmp_path, media):
    """Loopback is not admin: behind a reverse proxy, or from a rebinding page, everyone is loopback."""
    app = make_app(tmp_path)
    for addr in ("127.0.0.1", "::1", "192.0.2.7"):
        with Client(app, client=(addr, 40000)) as c:
            id_ = upload(c, media["still.png"]).json()["id"]
            wait_for(c, id_)
            r = c.delete(f"/api/analyses/{id_}")
            assert r.status_code == 403 and "POCOVID_API_TOKEN" in r.json()["detail"], addr
            assert c.get("/api/contributions").status_code == 403
            assert c.get(f"/api/analyses/{id_}").status_code == 200  # still there


def test_token_has_a_minimum_length(tmp_path):
    with pytest.raises(ValueError, match="at least 16"):
        ServerConfig(data_dir=tmp_path, token="short-token")
    assert ServerConfig(data_dir=tmp_path, token="   ").token is None  # blank: no token
    assert ServerConfig(data_dir=tmp_path, token=" " + TOKEN + "\n").token == TOKEN


def test_cors_is_off_by_default_and_takes_explicit_origins(tmp_path):
    pre = {"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"}
    with Client(make_app(tmp_path / "a")) as c:
        r = c.get("/api/health", headers={"Origin": "http://elsewhere.example"})
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in c.options("/api/analyses", headers=pre).headers
    with Client(make_app(tmp_path / "b", cors_origins=["http://viewer.example"])) as c:
        ok = c.get("/api/health", headers={"Origin": "http://viewer.example"})
        assert ok.headers["access-control-allow-origin"] == "http://viewer.example"
        other = c.get("/api/health", headers={"Origin": "http://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers
    with pytest.raises(ValueError):
        ServerConfig(data_dir=tmp_path, cors_origins=["*"])


# ------------------------------------------------------------------------------------------ hardening

def test_host_allow_list_refuses_other_hosts(tmp_path):
    """DNS rebinding: a page at evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    with Client(make_app(tmp_path, allowed_hosts=["pocovid.example"])) as c:
        for host in ("localhost", "127.0.0.1:8000", "[::1]:8000", "pocovid.example", "POCOVID.example:443"):
            assert c.get("/api/health", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "", "[::2]"):
            r = c.get("/api/analyses", headers={"Host": host})
            assert r.status_code == 400, host
            assert c.get("/", headers={"Host": host}).status_code == 400
    with pytest.raises(ValueError):
        ServerConfig(data_dir=tmp_path, allowed_hosts=["*"])


def test_csrf_cross_site_posts_are_refused_the_pages_own_work(tmp_path, media):
    """What a page of another site can send (a form, a text/plain fetch: no preflight) is refused;
    the page's own requests (X-Requested-With), bearer-token clients and JSON bodies pass."""
    with TestClient(make_app(tmp_path, token=TOKEN), base_url="http://localhost") as bare:
        form = {"diagnosis": "covid", "source": "x", "license": "CC BY 4.0", "consent": "true"}
        refused = [
            bare.post("/api/contributions", content=b"diagnosis=covid", headers={"Content-Type": "text/plain"}),
            bare.post("/api/contributions", data=form, files={"file": ("x", io.BytesIO(media["still.png"]))}),
            bare.post("/api/analyses", files={"file": ("x", io.BytesIO(media["still.png"]))}),
            bare.post("/api/analyses", data={"file": "x"}),  # application/x-www-form-urlencoded
            bare.delete("/api/analyses/0123456789abcdef"),
            # the header, but sent by a page of another site (CORS is off: a browser would not even send it)
            bare.post("/api/analyses", files={"file": ("x", io.BytesIO(media["still.png"]))},
                      headers={**PAGE_HEADERS, "Origin": "http://evil.example"}),
            bare.post("/api/analyses", files={"file": ("x", io.BytesIO(media["still.png"]))},
                      headers={**PAGE_HEADERS, "Origin": "null"}),
        ]
        for r in refused:
            detail = r.json()["detail"]
            assert r.status_code == 403 and ("X-Requested-With" in detail or "cross-origin" in detail), r.text
        assert bare.get("/api/analyses").json()["total"] == 0
        assert list(bare.app.state.storage.contributions.iterdir()) == []
        # the page: the header, same origin
        ok = bare.post("/api/analyses", files={"file": ("x", io.BytesIO(media["still.png"]))},
                       headers={**PAGE_HEADERS, "Origin": "http://localhost"})
        assert ok.status_code == 202, ok.text
        wait_for(bare, ok.json()["id"])
        # a bearer-token client (curl, scripts) and a JSON body need no extra header
        cid = _contribute(Client(bare.app), media["still.png"]).json()["id"]
        r = bare.post(f"/api/contributions/{cid}/accept", json={"note": "ok"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["status"] == "accepted"
        assert bare.delete(f"/api/analyses/{ok.json()['id']}", headers=AUTH).status_code == 204
        assert bare.get("/api/health").status_code == 200  # reading needs nothing


def test_serve_refuses_a_network_address_without_a_token(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pocovid.cli import app as cli

    monkeypatch.delenv("POCOVID_API_TOKEN", raising=False)
    for host in ("0.0.0.0", "192.0.2.7", "::"):
        res = CliRunner().invoke(cli, ["serve", "--host", host, "--data-dir", str(tmp_path)])
        assert res.exit_code == 1 and "POCOVID_API_TOKEN" in res.output, res.output
    monkeypatch.setenv("POCOVID_API_TOKEN", "too-short")
    res = CliRunner().invoke(cli, ["serve", "--data-dir", str(tmp_path)])
    assert res.exit_code == 1 and "at least 16" in res.output, res.output
    monkeypatch.delenv("POCOVID_API_TOKEN")
    res = CliRunner().invoke(cli, ["serve", "--data-dir", str(tmp_path), "--runtime", "tpu"])
    assert res.exit_code == 1 and "--runtime" in res.output and "unknown runtime" in res.output, res.output


def _raises_memory_error(path, model, out_dir, config=None, progress=None):
    raise MemoryError()


def _memory_bomb(path, model, out_dir, config=None, progress=None):
    """A decompression bomb's effect: far more memory than the child process may have."""
    progress(0.1, "region")
    blocks = [bytearray(256 * 1024 * 1024) for _ in range(64)]  # 16 GB
    return blocks


def _kills_its_process(path, model, out_dir, config=None, progress=None):
    """What the kernel's OOM killer does to a process past the machine's memory."""
    import signal

    progress(0.1, "region")
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_job_that_exhausts_memory_fails_and_is_not_run_again(tmp_path, media):
    data = tmp_path / "srv"
    with Client(make_app(data, analyze=_raises_memory_error)) as c:
        a = wait_for(c, upload(c, media["still.png"]).json()["id"])
        assert a["status"] == "failed" and "out of memory" in a["error"] and a["attempts"] == 1
    # the server was killed during a job (its analysis took it down): on restart it is failed, not re-run
    db = Database(Storage(data).db_path)
    db.update_analysis(a["id"], status="running", error=None)
    db.close()
    calls = []
    with Client(make_app(data, analyze=lambda *a, **k: calls.append(1))) as c:
        b = wait_for(c, a["id"])
        assert b["status"] == "failed" and "interrupted" in b["error"] and b["attempts"] == 1
    assert calls == []


def test_an_analysis_process_that_dies_fails_its_job_and_the_server_answers(tmp_path, media):
    """Isolated analyses (the real server's way): a memory bomb gets MemoryError under the per-job
    limit, a killed process fails its job; /api/health answers in well under a second throughout,
    and the next job runs in a fresh process."""
    with Client(make_app(tmp_path, analyze=_memory_bomb, isolate=True, job_memory_mb=1536)) as c:
        bomb = upload(c, media["still.png"]).json()["id"]
        slowest, t_end = 0.0, time.time() + 120
        while c.get(f"/api/analyses/{bomb}").json()["status"] not in ("done", "failed") and time.time() < t_end:
            t0 = time.time()
            assert c.get("/api/health").status_code == 200
            slowest = max(slowest, time.time() - t0)
            time.sleep(0.05)
        a = wait_for(c, bomb)
        assert a["status"] == "failed" and "out of memory" in a["error"] and "1536 MB" in a["error"], a
        assert slowest < 1.0
        c.app.state.jobs.analyze = _kills_its_process
        c.app.state.jobs.shutdown()  # new processes with the new analysis
        c.app.state.jobs.start()
        k = wait_for(c, upload(c, media["still.png"]).json()["id"], timeout=120)
        assert k["status"] == "failed" and "killed (SIGKILL" in k["error"], k
        assert c.get("/api/health").json()["analyses"]["failed"] == 2


def test_a_full_disk_fails_jobs_and_uploads_cleanly(tmp_path, media, monkeypatch):
    import errno

    from pocovid.server import jobs, uploads

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with Client(make_app(tmp_path, analyze=no_space)) as c:
        # the job: failed with the reason (was: 'running' for ever)
        a = wait_for(c, upload(c, media["still.png"]).json()["id"])
        assert a["status"] == "failed" and "disk is full" in a["error"]
        c.app.state.jobs.analyze = stub_analyze
        monkeypatch.setattr(jobs, "write_json", no_space)  # the result cannot be written
        a = wait_for(c, upload(c, media["still.png"]).json()["id"])
        assert a["status"] == "failed" and "disk is full" in a["error"]
        monkeypatch.undo()
        st = c.app.state.storage
        n_uploads = len(list(st.uploads.iterdir()))
        # uploads: refused with 507 JSON before reading when the free space is short ...
        monkeypatch.setattr(Storage, "free_bytes", lambda self: 10 * 1024 * 1024)
        r = upload(c, media["still.png"])
        assert r.status_code == 507 and "disk is full" in r.json()["detail"]
        r = _contribute(c, media["still.png"])
        assert r.status_code == 507
        monkeypatch.undo()

        # ... and when a write fails with ENOSPC while the body is stored
        class FullFile(io.BytesIO):
            def write(self, b):
                raise OSError(errno.ENOSPC, "No space left on device")

        def full_open(path, mode="r", *a, **k):
            Path(path).touch()  # the partial file exists, as on a real disk
            return FullFile()

        monkeypatch.setattr(uploads, "open", full_open, raising=False)
        r = upload(c, media["still.png"])
        assert r.status_code == 507 and r.headers["content-type"] == "application/json"
        monkeypatch.undo()
        assert list(st.tmp.iterdir()) == [] and len(list(st.uploads.iterdir())) == n_uploads
        assert c.get("/api/analyses").json()["total"] == 2


def test_a_locked_database_never_blocks_the_server(tmp_path, media):
    """Another process holds the write lock: health, the page and reads answer at once; an upload
    fails with 503 JSON after the busy timeout and leaves no file behind."""
    import sqlite3

    with Client(make_app(tmp_path, db_timeout_s=0.5)) as c:
        done = wait_for(c, upload(c, media["still.png"]).json()["id"])
        st = c.app.state.storage
        other = sqlite3.connect(st.db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
        try:
            for url in ("/api/health", "/static/app.js", "/", "/api/analyses", f"/api/analyses/{done['id']}"):
                t0 = time.time()
                r = c.get(url)
                assert r.status_code == 200 and time.time() - t0 < 1.0, (url, r.status_code, time.time() - t0)
            t0 = time.time()
            r = upload(c, media["still.png"])
            assert r.status_code == 503 and "busy" in r.json()["detail"] and time.time() - t0 < 5
            r = _contribute(c, media["still.png"])
            assert r.status_code == 503
            assert list(st.tmp.iterdir()) == [] and len(list(st.uploads.iterdir())) == 1
            assert list(st.contributions.iterdir()) == []
        finally:
            other.execute("ROLLBACK")
            other.close()
        ok = upload(c, media["still.png"])
        assert ok.status_code == 202 and wait_for(c, ok.json()["id"])["status"] == "done"


def test_query_and_multipart_limits_give_4xx_not_500(tmp_path, media):
    with Client(make_app(tmp_path, token=TOKEN), headers=AUTH) as c:
        for url in ("/api/analyses?offset=99999999999999999999", "/api/analyses?offset=1000000001",
                    "/api/contributions?offset=99999999999999999999"):
            r = c.get(url)
            assert r.status_code == 422 and "offset" in r.json()["detail"], url
        for n in (71, 300, 5000):
            b = "b" * n
            r = c.post("/api/analyses", content=_multipart(media["still.png"], boundary=b),
                       headers={"content-type": f"multipart/form-data; boundary={b}"})
            assert r.status_code == 400 and "boundary" in r.json()["detail"], (n, r.text)
        b = "b" * 70
        r = c.post("/api/analyses", content=_multipart(media["still.png"], boundary=b),
                   headers={"content-type": f"multipart/form-data; boundary={b}"})
        assert r.status_code == 202, r.text


def test_results_and_reports_never_show_server_paths(tmp_path, media):
    """An analysis given the stored file's full path (in-process) writes it into its report and
    reasons: the server keeps the stored name only."""
    def writes_paths(path, model, out_dir, config=None, progress=None):
        res = stub_analyze(path, model, out_dir, config, progress)
        (Path(out_dir) / "report.html").write_text(f"<p>{path}</p><p>{escape(str(path))}</p>", encoding="utf-8")
        return res.model_copy(update={"review_reasons": [f"{path}: looked odd"]})

    from html import escape

    with Client(make_app(tmp_path, analyze=writes_paths)) as c:
        a = wait_for(c, upload(c, media["still.png"]).json()["id"])
        assert a["status"] == "done", a
        root = str(c.app.state.storage.root)
        report = c.get(a["links"]["report"]).text
        assert root not in report and f"{a['id']}.png" in report
        assert root not in json.dumps(a) and a["result"]["file"] == f"{a['id']}.png"
        assert root not in c.get(a["files"]["result.json"]).text


# ------------------------------------------------------------------------------------------ DICOM

IDENTIFYING = [b"DOE^JANE", b"MRN-77731", b"ROE^JANE", b"DOE^MARY", b"CITYHOSP", b"bed 12", b"WHO^DR", b"19700101",
               b"20200314", b"Phantom General Hospital", b"Hospital Road", b"SMITH", b"SONO^GRAPHER", b"PH-OTHER",
               b"Phantom Street", b"ACC0001", b"SN-0001", b"PRIVATE-SECRET", b"OVERLAY-NOTE"]


def _dicom_with_private_and_overlay(src: bytes, dst: Path) -> bytes:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(src))
    block = ds.private_block(0x0041, "ACME SCANNER", create=True)
    block.add_new(0x10, "LO", "PRIVATE-SECRET")
    ds.add_new(0x60000022, "LO", "OVERLAY-NOTE")  # OverlayDescription
    ds.add_new(0x60000010, "US", 64)
    ds.save_as(dst, enforce_file_format=True)
    return dst.read_bytes()


def test_dicom_upload_is_de_identified_before_it_is_stored(tmp_path, media, caplog):
    import pydicom

    from pocovid.media import read_frames

    caplog.set_level(logging.DEBUG)
    original = _dicom_with_private_and_overlay(media["cine.dcm"], tmp_path / "orig.dcm")
    before = pydicom.dcmread(io.BytesIO(original))
    for s in IDENTIFYING:
        assert s in original, s  # the test file does carry them
    with Client(make_app(tmp_path / "srv")) as c:
        r = upload(c, original, name="DOE_JANE.dcm")
        assert r.status_code == 202
        a = wait_for(c, r.json()["id"])
        assert a["status"] == "done" and a["kind"] == "dicom" and a["deidentified"] is True
        stored_path = c.app.state.storage.resolve(c.app.state.db.get_analysis(a["id"])["upload"])
        stored = stored_path.read_bytes()
        for s in IDENTIFYING:
            assert s not in stored, s
        ds = pydicom.dcmread(stored_path)
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "AccessionNumber",
                   "ReferringPhysicianName", "StudyID"):
            assert kw not in ds or not str(ds.data_element(kw).value or ""), kw
        for kw in ("OtherPatientIDs", "OtherPatientNames", "PatientAddress", "InstitutionName", "OperatorsName",
                   "PerformingPhysicianName", "PatientBirthTime", "ImageComments", "SeriesDate", "AcquisitionDateTime",
                   "IssuerOfPatientID", "PatientMotherBirthName", "RequestingPhysician", "DeviceSerialNumber"):
            assert kw not in ds, kw
        assert not any(e.tag.is_private for e in ds.iterall())
        assert not any(0x6000 <= e.tag.group <= 0x60FF for e in ds)
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            assert ds.data_element(kw).value != before.data_element(kw).value, kw
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == before.SOPClassUID  # standard UIDs stay
        assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        # the pixels and the frame timing survive
        a_frames, b_frames = read_frames(stored_path), read_frames(tmp_path / "orig.dcm")
        assert len(a_frames) == len(b_frames) == 3 and np.array_equal(a_frames[1].image, b_frames[1].image)
        assert abs(a_frames[1].time_s - b_frames[1].time_s) < 1e-6
        # no original bytes anywhere in the data folder, no patient data in the log or the database
        for p in c.app.state.storage.root.rglob("*"):
            if p.is_file():
                assert b"MRN-77731" not in p.read_bytes(), p
    log_text = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "DOE" not in log_text and "MRN" not in log_text and "Jane" not in log_text


def test_unreadable_dicom_is_refused_not_stored(client):
    r = upload(client, b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"garbage" * 10)
    assert r.status_code == 400 and "DICOM" in r.json()["detail"]
    st = client.app.state.storage
    assert list(st.uploads.iterdir()) == [] and list(st.tmp.iterdir()) == []


# ------------------------------------------------------------------------------------------ contributions

def _contribute(c, data: bytes, **fields):
    form = {"diagnosis": "covid", "probe": "convex", "source": "Phantom General, Testtown", "license": "CC BY 4.0",
            "consent": "true", "b_lines": "yes", "a_lines": "no", "severity": "2"}
    form.update({k: v for k, v in fields.items() if v is not None})
    for k in [k for k, v in fields.items() if v is None]:
        form.pop(k, None)
    return c.post("/api/contributions", data=form, files={"file": ("x", io.BytesIO(data), "application/octet-stream")})


def test_contributions_queue_review_and_export_read_back_by_data_index(tmp_path, media):
    from typer.testing import CliRunner

    from pocovid.cli import app as cli
    from pocovid.data import index_dataset

    data = tmp_path / "srv"
    with Client(make_app(data, token=TOKEN)) as c:
        opts = c.get("/api/contributions/options").json()
        assert {"CC BY 4.0", "CC BY-NC 4.0", "CC BY-NC-SA 4.0"} <= set(opts["licenses"])
        assert [d["value"] for d in opts["diagnoses"]][:3] == ["covid", "pneumonia", "regular"]
        # refused forms: 422 with the field named; nothing stored
        for bad, field in [({"consent": None}, "consent"), ({"consent": "no"}, "consent"),
                           ({"license": "All rights reserved"}, "license"), ({"diagnosis": "flu"}, "diagnosis"),
                           ({"severity": "7"}, "severity"), ({"b_lines": "maybe"}, "b_lines"),
                           ({"source": None}, "source"), ({"case_ref": "John Smith"}, "case_ref"),
                           ({"probe": "phased"}, "probe")]:
            r = _contribute(c, media["still.png"], **bad)
            assert r.status_code == 422 and r.json()["detail"].startswith(field), (bad, r.text)
        assert _contribute(c, b"not media").status_code == 415
        assert _contribute(c, media["clip.mp4"][:300]).status_code == 400  # unreadable: refused at once
        assert list(c.app.state.storage.contributions.iterdir()) == []
        ok = [
            _contribute(c, media["clip.mp4"], case_ref="case-01"),
            _contribute(c, media["still.png"], diagnosis="regular", probe="linear", b_lines="no", a_lines="yes",
                        severity="0", license="CC BY-NC-SA 4.0"),
            _contribute(c, media["cine.dcm"], diagnosis="pneumonia", probe="convex", consolidation="yes",
                        effusion="yes", severity=None, license="CC BY-NC 4.0"),
            _contribute(c, media["clip.mp4"], diagnosis="viral", probe="unknown"),
            _contribute(c, media["clip.avi"], diagnosis="regular"),
        ]
        for r in ok:
            assert r.status_code == 201, r.text
        assert ok[2].json()["deidentified"] is True
        ids = [r.json()["id"] for r in ok]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        q = c.get("/api/contributions?status=pending", headers=auth).json()
        assert q["total"] == 5 and {it["id"] for it in q["items"]} == set(ids)
        dcm = next(it for it in q["items"] if it["id"] == ids[2])
        assert dcm["deidentified"] and dcm["burned_in_annotation"] == "NO" and dcm["findings"]["consolidation"] == 1
        stored = c.get(dcm["file_url"], headers=auth).content
        assert b"MRN-77731" not in stored and b"DOE" not in stored
        for i in ids[:4]:
            assert c.post(f"/api/contributions/{i}/accept", headers=auth, json={"note": "checked"}).status_code == 200
        rej = c.post(f"/api/contributions/{ids[4]}/reject", headers=auth).json()
        assert rej["status"] == "rejected"
        assert c.post("/api/contributions/0000000000000000/accept", headers=auth).status_code == 404

    out = tmp_path / "export"
    res = CliRunner().invoke(cli, ["contributions", "export", str(out), "--data-dir", str(data)])
    assert res.exit_code == 0, res.output
    assert "4 accepted contribution(s)" in res.output
    idx = index_dataset(out)
    assert not idx.failures and not idx.skipped, (idx.failures, idx.skipped)
    by_id = {next(i for i in ids if i in it.path): it for it in idx.items}
    assert set(by_id) == set(ids[:4])
    v, img, dcm, vir = (by_id[i] for i in ids[:4])
    assert v.path == f"pocus_videos/convex/Cov_contrib_{ids[0]}.mp4" and v.label == "covid" and v.kind == "video"
    assert v.findings.b_lines is True and v.findings.a_lines is False and v.severity == 2 and v.license == "CC BY 4.0"
    assert img.path == f"pocus_images/linear/Reg_contrib_{ids[1]}.png" and img.label == "regular"
    assert img.probe == "linear" and img.kind == "image" and img.severity == 0 and img.license == "CC BY-NC-SA 4.0"
    assert dcm.path == f"pocus_videos/convex/Pneu_contrib_{ids[2]}.dcm" and dcm.label == "pneumonia"
    assert dcm.findings.consolidation is True and dcm.findings.effusion is True and dcm.severity is None
    assert vir.label == "viral" and vir.probe == "unknown" and vir.path.startswith("pocus_videos/unknown/Vir_contrib_")
    assert len({it.patient for it in idx.items}) == 4  # one patient group each (case_ref or id)
    assert all(it.label_from == "metadata" and it.group_from == "metadata" for it in idx.items)
    # exporting again into the same folder keeps other rows and does not duplicate ours
    (out / "dataset_metadata.csv").write_text((out / "dataset_metadata.csv").read_text() +
                                              "Reg_other_1,regular,video,convex,9,,9,CC0 1.0\n")
    res = CliRunner().invoke(cli, ["contributions", "export", str(out), "--data-dir", str(data)])
    assert res.exit_code == 0, res.output
    rows = (out / "dataset_metadata.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 + 1 and sum("Reg_other_1" in r for r in rows) == 1
    # and `pocovid data index` reads it
    res = CliRunner().invoke(cli, ["data", "index", str(out)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["contributions", "list", "--data-dir", str(data), "--status", "accepted"])
    assert res.exit_code == 0 and "4 contribution(s)" in res.output


# ------------------------------------------------------------------------------------------ the real analysis



def _training_like_clip(path, label="covid"):
    # as quick_phantom_model's training clips (so the out-of-distribution guard accepts it)
    return write_phantom(path, label=label, n_frames=8, width=256, height=224, fps=10.0, seed=1, overlays=True,
                         probe="convex")


class TestRealAnalysis:
    def test_end_to_end_with_the_real_analysis(self, tmp_path, model_file):
        _training_like_clip(tmp_path / "covid.mp4")
        write_phantom(tmp_path / "img.png", label="regular", width=256, height=224, seed=1, overlays=True)
        from pocovid.server.jobs import real_analyze

        app = create_app(ServerConfig(data_dir=tmp_path / "srv", model=str(model_file)), analyze=real_analyze)
        with Client(app) as c:
            vid = upload(c, (tmp_path / "covid.mp4").read_bytes()).json()["id"]
            img = upload(c, (tmp_path / "img.png").read_bytes()).json()["id"]
            bad = upload(c, (tmp_path / "covid.mp4").read_bytes()[:4000]).json()["id"]
            a = wait_for(c, vid)
            assert a["status"] == "done", a
            res = a["result"]
            assert res["prediction"]["label"] in ("covid", "pneumonia", "regular")
            assert a["diagnosis"] == res["prediction"]["label"]
            assert set(res["prediction"]["probabilities"]) == {"covid", "pneumonia", "regular"}
            assert len(res["frames"]) == 8 and res["key_frames"]
            assert res["overlay_video"] == "overlay.mp4" and a["links"]["overlay_video"]
            assert a["links"]["timeline"] and a["links"]["report"] and len(a["links"]["key_frames"]) >= 1
            for url in [a["links"]["overlay_video"], a["links"]["report"], *a["links"]["key_frames"]]:
                assert c.get(url).status_code == 200
            assert res["file"] == f"{vid}.mp4" and a["model"] == "phantom.pt"
            i = wait_for(c, img)
            assert i["status"] == "done" and i["result"]["media"]["kind"] == "image"
            assert i["links"]["overlay_video"] is None
            assert i["links"]["timeline"] is None and i["result"]["timeline"] is None  # one frame: no timeline
            assert a["links"]["source_video"] is None  # an mp4 plays as it is
            b = wait_for(c, bad)
            assert b["status"] == "failed" and b["error"] and "\n" not in b["error"]
            m = c.get("/api/model").json()
            assert m["name"] == "phantom.pt" and m["metrics"]["video"]["balanced_accuracy"] == 0.9

    def test_the_runtime_is_a_setting_and_the_result_names_it(self, tmp_path, model_file):
        """`pocovid serve --runtime` (ServerConfig.runtime): the analyses' frame pass runs where it says, in
        the analysis process too, and each result names it (model_info.runtime)."""
        _training_like_clip(tmp_path / "covid.mp4")
        from pocovid.server.jobs import real_analyze

        for runtime in ("torch", "onnx"):
            cfg = ServerConfig(data_dir=tmp_path / runtime, model=str(model_file), overlay_video=False, runtime=runtime)
            with Client(create_app(cfg, analyze=real_analyze)) as c:
                a = wait_for(c, upload(c, (tmp_path / "covid.mp4").read_bytes()).json()["id"])
                assert a["status"] == "done", a
                assert a["result"]["model_info"]["runtime"] == runtime
        with pytest.raises(ValueError, match="unknown runtime 'tpu'"):
            ServerConfig(data_dir=tmp_path, runtime="tpu")

    def test_an_avi_gets_a_copy_that_browsers_play(self, tmp_path, model_file):
        """An AVI (or MPEG, GIF, ...) is no <video> source: the analysis writes playback.mp4 (H.264)
        beside the overlay, and `links.source_video` serves it."""
        _training_like_clip(tmp_path / "scan.avi")
        from pocovid.server.jobs import real_analyze

        app = create_app(ServerConfig(data_dir=tmp_path / "srv", model=str(model_file)), analyze=real_analyze)
        with Client(app) as c:
            a = wait_for(c, upload(c, (tmp_path / "scan.avi").read_bytes()).json()["id"])
            assert a["status"] == "done" and a["format"] == "avi", a
            assert a["result"]["playback_video"] == "playback.mp4"
            url = a["links"]["source_video"]
            assert url and url.endswith("/files/playback.mp4")
            r = c.get(url)
            assert r.status_code == 200 and r.headers["content-type"] == "video/mp4" and r.content[4:8] == b"ftyp"


from pocovid.server.local import free_port as _free_port  # noqa: E402
from pocovid.server.local import start_server as _start_server  # noqa: E402
from pocovid.server.local import stop_server  # noqa: E402


def start_server(data_dir, model_file, port, *extra, env=None):
    return _start_server(data_dir, model_file, port, "--threads", "1", *extra, env=env)


def test_real_server_process(tmp_path, model_file):
    """uvicorn on a free loopback port: upload -> poll -> result, artifacts, history, the streaming size
    limit over a real socket, restart on the same data folder."""
    _training_like_clip(tmp_path / "covid.mp4")
    data = tmp_path / "srv"
    port = _free_port()
    proc, base = start_server(data, model_file, port, "--max-upload-mb", "1")
    try:
        with httpx.Client(base_url=base, timeout=30, headers=PAGE_HEADERS) as c:
            r = c.post("/api/analyses", files={"file": ("a.mp4", (tmp_path / "covid.mp4").read_bytes())})
            assert r.status_code == 202, r.text
            id_ = r.json()["id"]
            t0 = time.time()
            while (a := c.get(f"/api/analyses/{id_}").json())["status"] not in ("done", "failed"):
                assert time.time() - t0 < 120
                time.sleep(0.2)
            assert a["status"] == "done", a
            v = c.get(a["links"]["overlay_video"], headers={"Range": "bytes=0-99"})
            assert v.status_code == 206 and len(v.content) == 100  # seekable in a browser
            assert c.get("/api/analyses").json()["items"][0]["id"] == id_
            # a body past the limit without Content-Length: 413 while streaming (or the socket is closed on us)
            big = _multipart((tmp_path / "covid.mp4").read_bytes()[:64] + os.urandom(3 * 1024 * 1024))

            def chunks():
                for i in range(0, len(big), 65536):
                    yield big[i:i + 65536]

            try:
                r = c.post("/api/analyses", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=b0undary"})
                assert r.status_code == 413
            except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
                pass
            assert c.get("/api/analyses").json()["total"] == 1
    finally:
        stop_server(proc)
    proc, base = start_server(data, model_file, port)
    try:
        with httpx.Client(base_url=base, timeout=30, headers=PAGE_HEADERS) as c:
            hist = c.get("/api/analyses").json()
            assert hist["total"] == 1 and hist["items"][0]["status"] == "done"
            a = c.get(f"/api/analyses/{id_}").json()
            assert c.get(a["links"]["report"]).status_code == 200
    finally:
        stop_server(proc)


@pytest.mark.parametrize("compressed", [False, True])
def test_deid_blanks_burnt_in_text_outside_the_scan_region(tmp_path, compressed):
    import pydicom

    from pocovid.phantom import write_phantom
    from pocovid.server.deid import deidentify_dicom

    src = tmp_path / "screen.dcm"
    ph = write_phantom(src, width=256, height=208, n_frames=24, overlays=True, seed=4, compressed=compressed)
    rep = deidentify_dicom(src, tmp_path / "clean.dcm")
    assert rep.pixels_masked and rep.burned_in_annotation == "YES"  # the file's own statement stands
    ds = pydicom.dcmread(tmp_path / "clean.dcm")
    lossless = (pydicom.uid.JPEGLSLossless, pydicom.uid.RLELossless)  # blanked JPEG: re-encoded without loss
    ts = ds.file_meta.TransferSyntaxUID
    assert ts in lossless if compressed else not ts.is_compressed
    px = ds.pixel_array
    assert px.shape[:3] == (24, 208, 256)
    text = ph.overlay_mask & ~ph.mask
    left = (px[:, text].max(-1) > 30).any(0)  # overlay pixels still visible in some frame
    assert text.any() and left.mean() < 0.01  # the burnt-in text is gone
    inside = ph.mask & ~ph.overlay_mask
    assert px[:, inside].mean() > 10  # the image itself is still there
