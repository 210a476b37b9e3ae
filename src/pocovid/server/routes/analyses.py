"""Analyses: upload a recording, poll its analysis, fetch its artifacts and the recording, delete it."""

from __future__ import annotations

import logging
import mimetypes
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse

from pocovid.server.deps import Config, Db, Jobs, Store, UrlPrefix, require_admin, row_or_404
from pocovid.analysis.result import AnalysisResult
from pocovid.server.results import links_for, stored_result, summarize_result
from pocovid.server.routes.common import (AUTH_ERRORS, CACHE_PRIVATE, FILE_BODY, FILE_PROP, MAX_OFFSET, NOT_FOUND,
                                          UPLOAD_ERRORS, artifact_response, multipart_doc)
from pocovid.server.schemas import (AnalysisCreated, AnalysisLinks, AnalysisPage, AnalysisStatus, AnalysisSummary,
                                    ErrorBody)
from pocovid.server.storage import new_id, valid_id
from pocovid.server.uploads import receive_form, store_and_record

log = logging.getLogger("pocovid.server")

router = APIRouter(prefix="/api/analyses", tags=["analyses"])
EXAM_CONFLICT = {409: {"model": ErrorBody, "description": "A recording of an exam: delete the exam"}}


def analysis_row(analysis_id: str, db: Db) -> dict:
    """The analysis named in the path; 404 when there is none."""
    return row_or_404(db.get_analysis, analysis_id, "analysis")


Row = Annotated[dict, Depends(analysis_row)]


def read_result(row: dict) -> tuple[AnalysisResult | None, str | None]:
    """A finished analysis' stored result validated back (`stored_result`): (result, None), or (None,
    a note for `error`) when it was written under another schema_version; (None, None) when not done."""
    if row["status"] != "done":
        return None, None
    result, note = stored_result(row["result"])
    if note:
        log.debug("analysis %s: its stored result does not validate; shown without it", row["id"])
    return result, note


def summary(row: dict, pre: str, read: tuple[AnalysisResult | None, str | None] | None = None) -> dict:
    """The history fields of a row (`read`: its `read_result`, when already done)."""
    result, note = read or read_result(row)
    fields = {k: row[k] for k in ("id", "status", "created", "kind", "format", "size", "progress", "stage", "error")}
    if note:
        fields["error"] = note
    return {**fields, **summarize_result(result), "url": f"{pre}/api/analyses/{row['id']}"}


def status_of(row: dict, pre: str) -> AnalysisStatus:
    read = read_result(row)
    result = read[0]
    base = f"{pre}/api/analyses/{row['id']}/files/"
    files = {f: base + f for f in row["files"]} if row["status"] == "done" else {}
    return AnalysisStatus(**summary(row, pre, read), exam=row.get("exam"), zone=row.get("zone"),
                          started=row["started"], finished=row["finished"],
                          attempts=row["attempts"], deidentified=row["deidentified"], model=row["model"],
                          result=result, files=files, links=AnalysisLinks(**links_for(result, files)))


@router.post("", status_code=202, response_model=AnalysisCreated, responses=UPLOAD_ERRORS,
             openapi_extra=multipart_doc({"file": FILE_PROP}, ["file"]))
async def create_analysis(request: Request, response: Response, cfg: Config, db: Db, storage: Store, jobs: Jobs,
                          pre: UrlPrefix) -> AnalysisCreated:
    """Upload a recording (multipart field `file`); it is stored, then analysed in the background.
    Poll the returned URL."""
    form = await receive_form(request, storage, max_file_bytes=cfg.max_upload_bytes,
                              min_free_bytes=cfg.min_free_bytes)
    f = form.file
    id_ = new_id()
    dest = storage.upload_path(id_, f.media.ext)
    deid, row = await store_and_record(f, dest, lambda deid: db.add_analysis(
        id_, kind=f.media.kind, format=f.media.name, size=dest.stat().st_size, upload=storage.relative(dest),
        deidentified=deid))
    size = row["size"]
    jobs.submit(id_)
    log.info("analysis %s: queued (%s, %d bytes%s)", id_, f.media.name, size, ", de-identified" if deid else "")
    url = f"{pre}/api/analyses/{id_}"
    response.headers["Location"] = url
    return AnalysisCreated(id=id_, status="queued", url=url)


@router.get("", response_model=AnalysisPage)
def list_analyses(db: Db, pre: UrlPrefix, offset: int = Query(0, ge=0, le=MAX_OFFSET),
                  limit: int = Query(20, ge=1, le=100)) -> AnalysisPage:
    """History of single analyses, newest first (an exam's recordings are listed with their exam)."""
    total, rows = db.list_analyses(offset, limit)
    return AnalysisPage(total=total, offset=offset, limit=limit,
                        items=[AnalysisSummary(**summary(r, pre)) for r in rows])


@router.get("/{analysis_id}", response_model=AnalysisStatus, responses=NOT_FOUND)
def get_analysis(row: Row, pre: UrlPrefix) -> AnalysisStatus:
    """Status (queued, running, done, failed), progress, the reason when failed; when done, the
    result and the URLs of its artifacts."""
    return status_of(row, pre)


@router.get("/{analysis_id}/files/{name:path}", responses={**NOT_FOUND, **FILE_BODY})
def get_file(analysis_id: str, name: str, row: Row, storage: Store):
    """An artifact of a finished analysis: only names listed in its `files`."""
    if row["status"] != "done" or name not in row["files"]:
        raise HTTPException(404, "no such file")
    return artifact_response(storage.analysis_dir(analysis_id, row.get("exam")), name)


@router.get("/{analysis_id}/source", responses={**NOT_FOUND, **FILE_BODY})
def get_source(row: Row, storage: Store):
    """The stored recording (DICOM: the de-identified file), e.g. to show it beside the overlay."""
    path = storage.resolve(row["upload"])
    if not path.is_file():
        raise HTTPException(404, "the recording is missing")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.suffix == ".dcm":
        media_type = "application/dicom"
    return FileResponse(path, media_type=media_type, headers=CACHE_PRIVATE)


@router.delete("/{analysis_id}", status_code=204, responses={**NOT_FOUND, **AUTH_ERRORS, **EXAM_CONFLICT},
               dependencies=[Depends(require_admin)])
def delete_analysis(analysis_id: str, db: Db, storage: Store, jobs: Jobs) -> Response:
    """Delete an analysis, its upload and its artifacts (a running one is stopped). A recording of
    an exam goes with its exam (DELETE /api/exams/{id}): 409."""
    row = db.get_analysis(analysis_id) if valid_id(analysis_id) else None
    if row is not None and row.get("exam"):
        raise HTTPException(409, f"this recording belongs to exam {row['exam']}: delete the exam "
                                 f"(DELETE /api/exams/{row['exam']})")
    row = db.delete_analysis(analysis_id) if row is not None else None
    if row is None:
        raise HTTPException(404, "no such analysis")
    jobs.cancel(analysis_id)
    storage.remove_analysis(analysis_id, row["upload"])
    log.info("analysis %s: deleted", analysis_id)
    return Response(status_code=204)
