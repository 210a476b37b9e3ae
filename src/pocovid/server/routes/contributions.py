"""Contributions: a labelled recording for the dataset queue; the admin's review (list, file,
accept, reject). `pocovid contributions export` writes the accepted ones out."""

from __future__ import annotations

import logging
import mimetypes
import sqlite3
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from pocovid.errors import PocovidError
from pocovid.server import contributions as contrib
from pocovid.server.db import Database
from pocovid.server.deps import Config, Db, Store, UrlPrefix, require_admin, row_or_404
from pocovid.server.routes.common import AUTH_ERRORS, FILE_PROP, MAX_OFFSET, NOT_FOUND, UPLOAD_ERRORS, multipart_doc
from pocovid.server.schemas import (Contribution, ContributionCreated, ContributionOptions, ContributionPage, Decision,
                                    ErrorBody)
from pocovid.server.storage import new_id
from pocovid.server.uploads import UploadError, database_error, receive_form, store_upload

log = logging.getLogger("pocovid.server")

router = APIRouter(prefix="/api/contributions", tags=["contributions"])

FORM_PROPS = {
    "file": FILE_PROP,
    "diagnosis": {"type": "string", "enum": list(contrib.DIAGNOSES)},
    "probe": {"type": "string", "enum": list(contrib.PROBES), "default": "unknown"},
    "source": {"type": "string", "maxLength": 200, "description": "Institution or source"},
    "license": {"type": "string", "enum": contrib.LICENSES},
    "consent": {"type": "string", "enum": ["true"], "description": "Confirms that consent and the right to "
                                                                   "share this recording exist"},
    "severity": {"type": "string", "enum": ["", "0", "1", "2", "3"], "description": "Lung severity score"},
    "case_ref": {"type": "string", "pattern": contrib.CASE_REF_RE.pattern,
                 "description": "Optional pseudonym grouping clips of one patient (never a name or ID)"},
    **{k: {"type": "string", "enum": ["", "yes", "no"], "description": f"Finding: {contrib.FINDING_LABELS[k]}"}
       for k in contrib.FINDINGS},
}
FORM_REQUIRED = ["file", "diagnosis", "source", "license", "consent"]


def contribution_row(contribution_id: str, db: Db) -> dict:
    """The contribution named in the path; 404 when there is none."""
    return row_or_404(db.get_contribution, contribution_id, "contribution")


Row = Annotated[dict, Depends(contribution_row)]


def contribution_out(c: dict, pre: str) -> Contribution:
    return Contribution(**{k: c[k] for k in ("id", "created", "status", "decided", "kind", "format", "size",
                                             "deidentified", "diagnosis", "probe", "source", "license",
                                             "case_ref", "findings", "severity", "note")},
                        burned_in_annotation=c.get("burned_in"),
                        file_url=f"{pre}/api/contributions/{c['id']}/file")


@router.get("/options", response_model=ContributionOptions)
async def contribution_options() -> ContributionOptions:
    """The contribution form's choices: diagnoses, probes, licenses, findings, severity scores."""
    return ContributionOptions(**contrib.options())


@router.post("", status_code=201, response_model=ContributionCreated,
             responses={**UPLOAD_ERRORS, 422: {"model": ErrorBody, "description": "A form field is missing or wrong"}},
             openapi_extra=multipart_doc(FORM_PROPS, FORM_REQUIRED))
async def create_contribution(request: Request, cfg: Config, db: Db, storage: Store) -> ContributionCreated:
    """Contribute a labelled recording to the dataset queue (reviewed by an admin before export)."""
    form = await receive_form(request, storage, max_file_bytes=cfg.max_upload_bytes,
                              text_fields=contrib.FORM_FIELDS, max_field_bytes=1024, min_free_bytes=cfg.min_free_bytes)
    f = form.file
    try:
        try:
            fields = contrib.parse_form(form.fields)
        except contrib.FormError as e:
            raise UploadError(422, str(e)) from None
        id_ = new_id()
        dest = storage.contribution_path(id_, f.media.ext)
        deid, burned_in = await store_upload(f, dest)
    finally:
        f.discard()
    try:
        from pocovid.media import probe

        info = await run_in_threadpool(probe, dest)
    except PocovidError as e:
        dest.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or str(e).replace(str(dest), "the recording")
        raise UploadError(400, f"the recording cannot be read: {reason}") from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    stored = False
    try:
        size = dest.stat().st_size
        await run_in_threadpool(db.add_contribution, {
            "id": id_, "kind": info.kind, "format": f.media.name, "ext": f.media.ext, "size": size,
            "file": storage.relative(dest), "deidentified": int(deid), "burned_in": burned_in, **fields})
        stored = True
    except sqlite3.OperationalError as e:
        raise database_error(e, "contribution") from None
    finally:
        if not stored:  # no file without its row
            dest.unlink(missing_ok=True)
    log.info("contribution %s: received (%s, %d bytes)", id_, f.media.name, size)
    return ContributionCreated(id=id_, status="pending", deidentified=deid)


@router.get("", response_model=ContributionPage, responses=AUTH_ERRORS, dependencies=[Depends(require_admin)])
def list_contributions(db: Db, pre: UrlPrefix,
                       status: str | None = Query(None, pattern="^(pending|accepted|rejected)$"),
                       offset: int = Query(0, ge=0, le=MAX_OFFSET), limit: int = Query(50, ge=1, le=500)
                       ) -> ContributionPage:
    """The contribution queue (admin)."""
    total, rows = db.list_contributions(status, offset, limit)
    return ContributionPage(total=total, offset=offset, limit=limit, items=[contribution_out(c, pre) for c in rows])


@router.get("/{contribution_id}/file", responses={**NOT_FOUND, **AUTH_ERRORS}, dependencies=[Depends(require_admin)])
def contribution_file(c: Row, storage: Store):
    """The contributed recording, for review (admin)."""
    path = storage.resolve(c["file"])
    if not path.is_file():
        raise HTTPException(404, "the file is missing")
    return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                        filename=f"contribution_{c['id']}{c['ext']}")


def decide(c: dict, status: str, decision: Decision | None, db: Database, pre: str) -> Contribution:
    c = db.decide_contribution(c["id"], status, decision.note if decision else None)
    log.info("contribution %s: %s", c["id"], status)
    return contribution_out(c, pre)


@router.post("/{contribution_id}/accept", response_model=Contribution, responses={**NOT_FOUND, **AUTH_ERRORS},
             dependencies=[Depends(require_admin)])
def accept_contribution(c: Row, db: Db, pre: UrlPrefix, decision: Decision | None = None) -> Contribution:
    """Accept a contribution: `pocovid contributions export` will include it (admin)."""
    return decide(c, "accepted", decision, db, pre)


@router.post("/{contribution_id}/reject", response_model=Contribution, responses={**NOT_FOUND, **AUTH_ERRORS},
             dependencies=[Depends(require_admin)])
def reject_contribution(c: Row, db: Db, pre: UrlPrefix, decision: Decision | None = None) -> Contribution:
    """Reject a contribution (it stays in the queue, marked rejected) (admin)."""
    return decide(c, "rejected", decision, db, pre)
