"""Exams: create one, add its recordings (several files at once; zones from their names or given),
follow it, read its conclusion and report, move a recording to another zone, delete it."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from pocovid.analysis.exam_result import ExamResult
from pocovid.analysis.zones import normalize_zone, zone_from_name
from pocovid.errors import PocovidError
from pocovid.server.db import FINISHED
from pocovid.server.deps import Config, Db, Exams, Jobs, Store, UrlPrefix, require_admin, row_or_404
from pocovid.server.exams import EXAM_HTML, EXAM_JSON, MAX_RECORDINGS, exam_file_names
from pocovid.server.results import summarize_result
from pocovid.server.routes.analyses import read_result
from pocovid.server.routes.common import (AUTH_ERRORS, FILE_BODY, FILE_PROP, MAX_OFFSET, NOT_FOUND, UPLOAD_ERRORS,
                                          artifact_response, multipart_doc)
from pocovid.server.schemas import (ErrorBody, ExamCreate, ExamCreated, ExamLinks, ExamPage, ExamRecording,
                                    ExamStatus, ExamSummary, QueueCounts, RecordingsAdded, RefusedRecording,
                                    ZoneChange)
from pocovid.server.storage import new_id, valid_id
from pocovid.server.uploads import UploadError, receive_form, store_and_record

log = logging.getLogger("pocovid.server")

router = APIRouter(prefix="/api/exams", tags=["exams"])
CONFLICT = {409: {"model": ErrorBody, "description": "The exam holds as many recordings as it may"}}
ZONES_PROP = {"type": "string", "description": "Optional: one zone per file, in order, comma-separated (R1..R3, "
                                               "L1..L3, '-' for none), as `pocovid exam --zones`. Without it each "
                                               "file's zone is read from its name (patient_<ID>_<POINT>, or the one "
                                               "name part that is a BLUE point: scan_L2.mp4)"}


def exam_row(exam_id: str, db: Db) -> dict:
    """The exam named in the path; 404 when there is none."""
    return row_or_404(db.get_exam, exam_id, "exam")


ExamRow = Annotated[dict, Depends(exam_row)]


def recording(c: dict, exam_id: str, pre: str) -> ExamRecording:
    """A recording row as the API shows it (its analysis summarised; URLs of its report and key frame)."""
    result, note = read_result(c)
    base = f"{pre}/api/exams/{exam_id}/files/{c['id']}/"
    report = key = None
    if result is not None:
        report = base + result.report if result.report in c["files"] else None
        keys = [k for k in result.key_frames if k.label == result.prediction.label] or result.key_frames
        key = base + keys[0].image if keys and keys[0].image in c["files"] else None
    fields = {k: c[k] for k in ("id", "zone", "status", "created", "kind", "format", "size", "progress", "stage",
                                "error")}
    if note:
        fields["error"] = note
    return ExamRecording(**fields, **summarize_result(result), file=c["upload"].rsplit("/", 1)[-1],
                         zone_source=c["zone_source"] if c["zone"] else None, url=f"{pre}/api/analyses/{c['id']}",
                         report=report, key_frame=key)


def stored_exam(row: dict) -> ExamResult | None:
    """The stored conclusion validated back; None when not done (or written under another schema)."""
    if row["status"] != "done" or row["result"] is None:
        return None
    try:
        return ExamResult.model_validate(row["result"])
    except ValidationError:
        log.debug("exam %s: its stored result does not validate; shown without it", row["id"])
        return None


def summary(row: dict, clips: list[dict], pre: str, result: ExamResult | None = None) -> dict:
    counts = QueueCounts()
    for c in clips:
        setattr(counts, c["status"], getattr(counts, c["status"]) + 1)
    progress = (sum(1.0 if c["status"] in FINISHED else float(c["progress"] or 0) for c in clips) / len(clips)
                if clips else 0.0)
    v = result.verdict if result is not None else None
    return dict(id=row["id"], created=row["created"], updated=row["updated"], status=row["status"],
                patient=row["patient"], protocol=row["protocol"], n_recordings=len(clips), counts=counts,
                progress=round(progress, 4), error=row["error"], diagnosis=v.label if v else None,
                probability=v.probabilities[v.label] if v else None,
                no_verdict=result.no_verdict if result is not None else None,
                lus_score=result.lus.score if result is not None else None,
                lus_max=result.lus.max_possible if result is not None else None,
                review_recommended=result.review_recommended if result is not None else None,
                url=f"{pre}/api/exams/{row['id']}")


def status_of(row: dict, clips: list[dict], storage, pre: str) -> ExamStatus:
    result = stored_exam(row)
    base = f"{pre}/api/exams/{row['id']}/files/"
    files = {n: base + n for n in exam_file_names(row, clips, storage.exam_dir(row["id"]))}
    return ExamStatus(**summary(row, clips, pre, result), recordings=[recording(c, row["id"], pre) for c in clips],
                      result=result, files=files,
                      links=ExamLinks(report=files.get(EXAM_HTML), exam_json=files.get(EXAM_JSON)))


@router.post("", status_code=201, response_model=ExamCreated,
             responses={403: UPLOAD_ERRORS[403], 422: {"model": ErrorBody}})
def create_exam(response: Response, db: Db, pre: UrlPrefix,
                body: Annotated[Optional[ExamCreate], Body()] = None) -> ExamCreated:
    """Open an exam (JSON body, optional: `patient`, `protocol`); then POST its recordings."""
    body = body or ExamCreate()
    id_ = new_id()
    db.add_exam(id_, patient=body.patient.strip() if body.patient else None, protocol=body.protocol)
    log.info("exam %s: created", id_)
    url = f"{pre}/api/exams/{id_}"
    response.headers["Location"] = url
    return ExamCreated(id=id_, url=url, recordings_url=url + "/recordings")


@router.get("", response_model=ExamPage)
def list_exams(db: Db, pre: UrlPrefix, offset: int = Query(0, ge=0, le=MAX_OFFSET),
               limit: int = Query(20, ge=1, le=100)) -> ExamPage:
    """Exams, newest first."""
    total, rows = db.list_exams(offset, limit)
    return ExamPage(total=total, offset=offset, limit=limit,
                    items=[ExamSummary(**summary(r, db.exam_recordings(r["id"]), pre, stored_exam(r))) for r in rows])


@router.get("/{exam_id}", response_model=ExamStatus, responses=NOT_FOUND)
def get_exam(row: ExamRow, db: Db, storage: Store, pre: UrlPrefix) -> ExamStatus:
    """The exam: each recording's zone and status, the progress; when done, the `ExamResult`."""
    return status_of(row, db.exam_recordings(row["id"]), storage, pre)


def _zones_given(text: str | None, n: int) -> list[str | None] | None:
    """The `zones` field: one zone per file part, in order ('-': none); None when not given."""
    if text is None or not text.strip():
        return None
    items = [z.strip() for z in text.split(",")]
    if len(items) != n:
        raise UploadError(422, f"zones: {len(items)} zone(s) for {n} file(s): give one per file, in order ('-' for "
                               "none)")
    try:
        return [normalize_zone(z, "zones") for z in items]
    except PocovidError as e:
        raise UploadError(422, str(e)) from None


@router.post("/{exam_id}/recordings", status_code=202, response_model=RecordingsAdded,
             responses={**UPLOAD_ERRORS, **NOT_FOUND, **CONFLICT},
             openapi_extra=multipart_doc({"file": {"type": "array", "items": FILE_PROP}, "zones": ZONES_PROP},
                                         ["file"]))
async def add_recordings(exam_id: str, request: Request, cfg: Config, db: Db, storage: Store, jobs: Jobs,
                         pre: UrlPrefix) -> RecordingsAdded:
    """Add recordings to the exam: multipart, one or more `file` parts (each checked as an upload to
    /api/analyses is), optional `zones`. Each is stored and analysed in the background; the exam is
    concluded when the last one is finished. A file pocovid cannot read is listed in `refused`."""
    row = await run_in_threadpool(exam_row, exam_id, db)
    room = MAX_RECORDINGS - len(await run_in_threadpool(db.exam_recordings, exam_id))
    if room <= 0:
        raise HTTPException(409, f"this exam already holds {MAX_RECORDINGS} recordings, as many as one exam may")
    form = await receive_form(request, storage, max_file_bytes=cfg.max_upload_bytes, min_free_bytes=cfg.min_free_bytes,
                              text_fields=("zones",), max_files=room, skip_refused=True)
    added, names, refused = [], [], [RefusedRecording(index=r.index, name=r.name, reason=r.reason)
                                     for r in form.refused]
    try:
        given = _zones_given(form.fields.get("zones"), len(form.files) + len(form.refused))
        while form.files:
            f = form.files.pop(0)
            if given is not None:
                zone, source = given[f.index], "option" if given[f.index] else None
            else:
                zone = zone_from_name(f.name)[0] if f.name else None
                source = "name" if zone else None
            try:
                clip = await _store(f, row["id"], zone, source, db, storage)
            except UploadError as e:
                if e.status not in (400, 415):  # the disk, the database: the whole upload stops here
                    raise
                refused.append(RefusedRecording(index=f.index, name=f.name, reason=e.detail))
                continue
            jobs.submit(clip["id"])
            added.append(clip)
            names.append(f.name)
    finally:
        form.discard()
    if not added:
        raise UploadError(415 if any("type" in r.reason for r in refused) else 400,
                          "no recording added: " + "; ".join(f"file {r.index + 1}: {r.reason}" for r in refused))
    log.info("exam %s: %d recording(s) added, %d refused", exam_id, len(added), len(refused))
    return RecordingsAdded(exam=exam_id, url=f"{pre}/api/exams/{exam_id}", names=names, refused=refused,
                           added=[recording(c, exam_id, pre) for c in added])


async def _store(f, exam_id: str, zone: str | None, source: str | None, db, storage) -> dict:
    """Store one received file as a recording of the exam (DICOM de-identified) and queue it."""
    id_ = new_id()
    dest = storage.upload_path(id_, f.media.ext)
    try:
        _, row = await store_and_record(f, dest, lambda deid: db.add_analysis(
            id_, kind=f.media.kind, format=f.media.name, size=dest.stat().st_size, upload=storage.relative(dest),
            deidentified=deid, exam=exam_id, zone=zone, zone_source=source))
    except KeyError:
        raise UploadError(404, "no such exam (deleted during the upload)") from None
    return row


@router.patch("/{exam_id}/recordings/{recording_id}", response_model=ExamStatus,
              responses={**NOT_FOUND, 403: UPLOAD_ERRORS[403], 422: {"model": ErrorBody}})
def change_zone(recording_id: str, change: ZoneChange, row: ExamRow, db: Db, storage: Store, exams: Exams,
                pre: UrlPrefix) -> ExamStatus:
    """Move a recording to another zone (JSON `{"zone": "L2"}`; null or '-': unassigned). The exam is
    concluded again (at once when its recordings are all finished)."""
    clip = db.get_analysis(recording_id) if valid_id(recording_id) else None
    if clip is None or clip.get("exam") != row["id"]:
        raise HTTPException(404, "no such recording in this exam")
    try:
        zone = normalize_zone(change.zone or "", "zone")
    except PocovidError as e:
        raise HTTPException(422, str(e)) from None
    db.set_zone(recording_id, zone, "option" if zone else None)
    exams.conclude(row["id"])
    return status_of(db.get_exam(row["id"]), db.exam_recordings(row["id"]), storage, pre)


@router.get("/{exam_id}/files/{name:path}", responses={**NOT_FOUND, **FILE_BODY})
def get_file(name: str, row: ExamRow, db: Db, storage: Store):
    """exam.html, exam.json (once concluded) and each finished recording's artifacts (`<id>/<name>`):
    only names the exam lists, resolved inside its folder."""
    base = storage.exam_dir(row["id"]).resolve()
    if name not in exam_file_names(row, db.exam_recordings(row["id"]), base):
        raise HTTPException(404, "no such file")
    # the exam's own page and JSON change while recordings are added: never cached
    return artifact_response(base, name, {"Cache-Control": "no-store"} if name in (EXAM_HTML, EXAM_JSON) else None)


@router.delete("/{exam_id}", status_code=204, responses={**NOT_FOUND, **AUTH_ERRORS},
               dependencies=[Depends(require_admin)])
def delete_exam(exam_id: str, db: Db, storage: Store, jobs: Jobs) -> Response:
    """Delete an exam, its recordings (uploads, analyses, artifacts) and its report; running ones are stopped."""
    gone = db.delete_exam(exam_id) if valid_id(exam_id) else None
    if gone is None:
        raise HTTPException(404, "no such exam")
    _, clips = gone
    for c in clips:
        jobs.cancel(c["id"])
    storage.remove_exam(exam_id, [c["upload"] for c in clips])
    log.info("exam %s: deleted (%d recordings)", exam_id, len(clips))
    return Response(status_code=204)
