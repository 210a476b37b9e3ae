"""The FastAPI app: the API (docs/server.md), the web page at /, offline API docs at /docs.

    app = create_app(ServerConfig(data_dir="srv"))                  # the real analysis
    app = create_app(cfg, analyze=stub, model=object())             # tests: any analysis callable

`analyze(path, model, out_dir, config=..., progress=callable(fraction, stage)) -> dict` runs in the
worker pool (jobs.py); by default it is `pocovid.analysis.analyze_recording`.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import mimetypes
import os
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from pocovid import __version__
from pocovid.errors import PocovidError
from pocovid.server import contributions as contrib
from pocovid.server.config import ServerConfig
from pocovid.server.db import Database
from pocovid.server.deid import DeidError, deidentify_dicom
from pocovid.server.jobs import JobRunner, ModelProvider, default_analysis_config, real_analyze
from pocovid.server.schemas import (AnalysisCreated, AnalysisLinks, AnalysisPage, AnalysisStatus, AnalysisSummary,
                                    Contribution, ContributionCreated, ContributionOptions, ContributionPage, Decision,
                                    ErrorBody, Health, ModelInfo, QueueCounts)
from pocovid.server.storage import Storage, new_id, valid_id
from pocovid.server.uploads import UploadError, receive_form

log = logging.getLogger("pocovid.server")

STATIC_DIR = Path(__file__).parent / "static"
LOOPBACK = {"127.0.0.1", "::1", "localhost", "testclient"}

CSP_PAGE = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; "
            "script-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'self'")
# Swagger UI's page is one inline script over the bundled files (fastapi-offline): no CDN.
CSP_DOCS = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'")
# Artifacts (report.html): images and styles of this server, no script.
CSP_FILES = ("default-src 'self' data: blob:; style-src 'self' 'unsafe-inline' data:; script-src 'none'; "
             "object-src 'none'; frame-ancestors 'self'; base-uri 'none'")


class SecurityHeaders:
    """Plain ASGI middleware: security headers on every response (bodies stream through untouched)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"cross-origin-opener-policy", b"same-origin")]
                if b"content-security-policy" not in names:
                    csp = CSP_DOCS if path.startswith(("/docs", "/offline-docs")) else CSP_PAGE
                    extra.append((b"content-security-policy", csp.encode()))
                if path.startswith("/api/") and b"cache-control" not in names and "/files/" not in path:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = headers + [h for h in extra if h[0] not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _multipart_doc(properties: dict, required: list[str]) -> dict:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": required, "properties": properties}}}}}


_FILE_PROP = {"type": "string", "format": "binary",
              "description": "The recording: video (MP4, MOV, AVI, MPEG, MKV, WebM, WMV, GIF), image (PNG, JPEG, "
                             "BMP, TIFF) or DICOM. The type is read from the content; DICOM is de-identified "
                             "before it is stored."}
_ERRORS = {400: {"model": ErrorBody, "description": "Bad upload (not multipart, no file, empty, truncated)"},
           413: {"model": ErrorBody, "description": "Upload larger than the limit"},
           415: {"model": ErrorBody, "description": "Not a recording pocovid reads (by content)"}}
_AUTH_ERRORS = {401: {"model": ErrorBody, "description": "Bearer token missing"},
                403: {"model": ErrorBody, "description": "Wrong token, or no token configured and not a loopback "
                                                         "client"}}


def _first(d: dict, *keys):
    for k in keys:
        if isinstance(d, dict) and d.get(k) is not None:
            return d[k]
    return None


def summarize_result(result: dict | None) -> dict:
    """Diagnosis, its probability and the flags from an analysis result (result.json of
    `pocovid.analysis`: prediction.label / .probabilities, review_recommended, out_of_distribution)."""
    out = {"diagnosis": None, "probability": None, "withheld": None, "review_recommended": None, "not_lung": None}
    if not isinstance(result, dict):
        return out
    pred = result.get("prediction")
    if isinstance(pred, dict):
        label, probs = pred.get("label"), pred.get("probabilities")
    else:
        label, probs = pred if isinstance(pred, str) else result.get("diagnosis"), result.get("probabilities")
    nl = _first(result, "out_of_distribution", "not_lung")
    out["not_lung"] = bool(nl) if nl is not None else None
    # out of distribution: the label is withheld, never shown as a diagnosis (docs/analyze.md)
    out["withheld"] = bool((isinstance(pred, dict) and pred.get("withheld")) or out["not_lung"])
    if result.get("review_recommended") is not None:
        out["review_recommended"] = bool(result["review_recommended"])
    if out["withheld"]:
        return out
    out["diagnosis"] = str(label) if label is not None else None
    if isinstance(probs, dict) and label in probs:
        with contextlib.suppress(TypeError, ValueError):
            out["probability"] = float(probs[label])
    return out


_VIDEO_EXT = (".mp4", ".webm", ".m4v", ".mov", ".ogv")
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg")


def links_for(files: list[str], url_of: Callable[[str], str], result: dict | None) -> AnalysisLinks:
    """The main artifacts among the file names (by the names the analysis writes)."""
    low = {f: f.lower().rsplit("/", 1)[-1] for f in files}
    report = next((f for f, n in low.items() if n.endswith((".html", ".htm")) and "report" in n), None) \
        or next((f for f, n in low.items() if n.endswith((".html", ".htm"))), None)
    timeline = next((f for f, n in low.items() if "timeline" in n and n.endswith(_IMAGE_EXT)), None)
    videos = [f for f, n in low.items() if n.endswith(_VIDEO_EXT)]
    overlay = next((f for f in videos if "overlay" in low[f] or "heatmap" in low[f] or "cam" in low[f]), None)
    source = next((f for f in videos if f != overlay), None)
    images = [f for f, n in low.items() if n.endswith(_IMAGE_EXT) and f != timeline]
    return AnalysisLinks(
        report=url_of(report) if report else None, timeline=url_of(timeline) if timeline else None,
        overlay_video=url_of(overlay) if overlay else None, source_video=url_of(source) if source else None,
        result_json=url_of("result.json") if "result.json" in files else None,
        key_frames=[url_of(f) for f in images])


def create_app(config: ServerConfig | None = None, *, analyze: Callable | None = None, model: Any = None,
               model_loader: Callable[[str], Any] | None = None,
               analysis_config: Callable[[], Any] | None = None) -> FastAPI:
    """The service over `config.data_dir`. `analyze`, `model`, `model_loader` and `analysis_config`
    replace the real analysis, the loaded model, the model loading and the AnalysisConfig factory
    (tests inject stubs here)."""
    cfg = config or ServerConfig.from_env()
    storage = Storage(cfg.data_dir)
    db = Database(storage.db_path)
    models = ModelProvider(cfg.model, model=model, loader=model_loader)
    jobs = JobRunner(db, storage, models, analyze=analyze or real_analyze, workers=cfg.workers,
                     config_factory=analysis_config or (lambda: default_analysis_config(cfg.overlay_video)),
                     max_attempts=cfg.max_attempts)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        db.open()
        n_tmp = storage.clean_tmp()
        rec = jobs.start()
        log.info("pocovid server: data folder ready, %d worker(s); recovered %s; %d partial upload(s) removed",
                 cfg.workers, rec, n_tmp)
        try:
            yield
        finally:
            await run_in_threadpool(jobs.shutdown, True)
            db.close()

    app = FastAPI(
        title="pocovid", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Decision support for lung point-of-care ultrasound (COVID-19 / bacterial pneumonia / "
                    "healthy). **Decision support for trained clinicians, not a diagnosis.** "
                    "Upload a recording, poll its analysis, fetch the artifacts; contribute data.",
        swagger_ui_parameters={"validatorUrl": None})
    app.state.config, app.state.storage, app.state.db, app.state.jobs, app.state.models = cfg, storage, db, jobs, models
    app.add_middleware(SecurityHeaders)
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError):
        headers = {"Connection": "close"} if exc.status == 413 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        parts = []
        for e in errs[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    # ------------------------------------------------------------------------------- helpers
    bearer = HTTPBearer(auto_error=False, description="POCOVID_API_TOKEN of the server")

    def require_admin(request: Request,
                      cred: Optional[HTTPAuthorizationCredentials] = Security(bearer)) -> None:
        """Token check for deletion and contributions admin (hmac.compare_digest)."""
        if cfg.token is None:
            host = request.client.host if request.client else ""
            if host in LOOPBACK:
                return
            raise HTTPException(403, "this endpoint needs POCOVID_API_TOKEN set on the server when used from "
                                     "another machine")
        if cred is None or not cred.credentials:
            raise HTTPException(401, "bearer token required (Authorization: Bearer <POCOVID_API_TOKEN>)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(cred.credentials.strip().encode("utf-8"), cfg.token.encode("utf-8")):
            raise HTTPException(403, "wrong token")

    def prefix(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    def get_row(id_: str) -> dict:
        row = db.get_analysis(id_) if valid_id(id_) else None
        if row is None:
            raise HTTPException(404, "no such analysis")
        return row

    def summary(row: dict, pre: str) -> dict:
        s = summarize_result(row.get("result")) if row["status"] == "done" else {}
        return {**{k: row[k] for k in ("id", "status", "created", "kind", "format", "size", "progress", "stage",
                                       "error")}, **s, "url": f"{pre}/api/analyses/{row['id']}"}

    def status_of(row: dict, pre: str) -> AnalysisStatus:
        base = f"{pre}/api/analyses/{row['id']}/files/"
        files = {f: base + f for f in row["files"]} if row["status"] == "done" else {}
        links = links_for(list(files), lambda f: base + f, row["result"]) if files else AnalysisLinks()
        return AnalysisStatus(**summary(row, pre), started=row["started"], finished=row["finished"],
                              attempts=row["attempts"], deidentified=row["deidentified"], model=row["model"],
                              result=row["result"] if row["status"] == "done" else None, files=files, links=links)

    async def store_upload(f, dest: Path) -> tuple[bool, str | None]:
        """Move the received file to `dest`; DICOM is de-identified on the way. (deidentified, burned_in)"""
        if f.media.kind != "dicom":
            os.replace(f.path, dest)
            return False, None
        try:
            rep = await run_in_threadpool(deidentify_dicom, f.path, dest)
        except DeidError as e:
            raise UploadError(400, f"DICOM file refused: {e}") from None
        finally:
            f.discard()  # the original (identified) bytes never stay
        return True, rep.burned_in_annotation

    # ------------------------------------------------------------------------------- page, docs
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    with contextlib.suppress(ImportError):
        import fastapi_offline

        app.mount("/offline-docs", StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"),
                  name="offline-docs")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        pre = prefix(request)
        try:
            import fastapi_offline  # noqa: F401
        except ImportError:
            return HTMLResponse(f"<!doctype html><title>pocovid API</title><p>The interactive API page needs the "
                                f"<code>fastapi-offline</code> package (<code>pip install 'pocovid[serve]'</code>). "
                                f"The API description is at <a href='{pre}/openapi.json'>/openapi.json</a>.</p>")
        return get_swagger_ui_html(openapi_url=f"{pre}/openapi.json", title="pocovid API",
                                   swagger_js_url=f"{pre}/offline-docs/swagger-ui-bundle.js",
                                   swagger_css_url=f"{pre}/offline-docs/swagger-ui.css",
                                   swagger_favicon_url=f"{pre}/static/favicon.svg",
                                   swagger_ui_parameters=app.swagger_ui_parameters)

    # ------------------------------------------------------------------------------- service
    @app.get("/api/health", response_model=Health, tags=["service"])
    async def health() -> Health:
        """Liveness, queue counts and settings (never loads the model)."""
        return Health(version=__version__, model_loaded=models.loaded, model_error=models.error, workers=cfg.workers,
                      analyses=QueueCounts(**db.count_by_status()), max_upload_mb=cfg.max_upload_mb,
                      token_required=cfg.token is not None)

    @app.get("/api/model", response_model=ModelInfo, tags=["service"],
             responses={503: {"model": ErrorBody, "description": "The model cannot be loaded"}})
    async def model_info() -> ModelInfo:
        """The model: name, classes, versions and its cross-validation figures (model file metadata)."""
        try:
            info = await run_in_threadpool(models.info)
        except PocovidError as e:
            raise HTTPException(503, f"model not available: {e}") from None
        return ModelInfo(**info)

    # ------------------------------------------------------------------------------- analyses
    @app.post("/api/analyses", status_code=202, response_model=AnalysisCreated, tags=["analyses"],
              responses=_ERRORS, openapi_extra=_multipart_doc({"file": _FILE_PROP}, ["file"]))
    async def create_analysis(request: Request, response: Response) -> AnalysisCreated:
        """Upload a recording (multipart field `file`); it is stored, then analysed in the background.
        Poll the returned URL."""
        form = await receive_form(request, storage, max_file_bytes=cfg.max_upload_bytes)
        f = form.file
        id_ = new_id()
        dest = storage.upload_path(id_, f.media.ext)
        try:
            deid, _ = await store_upload(f, dest)
        except BaseException:
            f.discard()
            raise
        size = dest.stat().st_size
        db.add_analysis(id_, kind=f.media.kind, format=f.media.name, size=size, upload=storage.relative(dest),
                        deidentified=deid)
        jobs.submit(id_)
        log.info("analysis %s: queued (%s, %d bytes%s)", id_, f.media.name, size, ", de-identified" if deid else "")
        url = f"{prefix(request)}/api/analyses/{id_}"
        response.headers["Location"] = url
        return AnalysisCreated(id=id_, status="queued", url=url)

    @app.get("/api/analyses", response_model=AnalysisPage, tags=["analyses"])
    async def list_analyses(request: Request, offset: int = Query(0, ge=0),
                            limit: int = Query(20, ge=1, le=100)) -> AnalysisPage:
        """History, newest first."""
        total, rows = db.list_analyses(offset, limit)
        pre = prefix(request)
        return AnalysisPage(total=total, offset=offset, limit=limit,
                            items=[AnalysisSummary(**summary(r, pre)) for r in rows])

    @app.get("/api/analyses/{analysis_id}", response_model=AnalysisStatus, tags=["analyses"],
             responses={404: {"model": ErrorBody}})
    async def get_analysis(analysis_id: str, request: Request) -> AnalysisStatus:
        """Status (queued, running, done, failed), progress, the reason when failed; when done, the
        result and the URLs of its artifacts."""
        return status_of(get_row(analysis_id), prefix(request))

    @app.get("/api/analyses/{analysis_id}/files/{name:path}", tags=["analyses"],
             responses={404: {"model": ErrorBody}, 200: {"content": {"application/octet-stream": {}}}})
    async def get_file(analysis_id: str, name: str):
        """An artifact of a finished analysis: only names listed in its `files`."""
        row = get_row(analysis_id)
        if row["status"] != "done" or name not in row["files"]:
            raise HTTPException(404, "no such file")
        base = storage.analysis_dir(analysis_id).resolve()
        path = (base / name).resolve()
        try:
            path.relative_to(base)
        except ValueError:
            raise HTTPException(404, "no such file") from None
        if not path.is_file():
            raise HTTPException(404, "no such file")
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {"Cache-Control": "private, max-age=3600"}
        if media_type in ("text/html", "image/svg+xml"):
            headers["Content-Security-Policy"] = CSP_FILES
        return FileResponse(path, media_type=media_type, headers=headers)

    @app.get("/api/analyses/{analysis_id}/source", tags=["analyses"],
             responses={404: {"model": ErrorBody}, 200: {"content": {"application/octet-stream": {}}}})
    async def get_source(analysis_id: str):
        """The stored recording (DICOM: the de-identified file), e.g. to show it beside the overlay."""
        row = get_row(analysis_id)
        path = storage.resolve(row["upload"])
        if not path.is_file():
            raise HTTPException(404, "the recording is missing")
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix == ".dcm":
            media_type = "application/dicom"
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    @app.delete("/api/analyses/{analysis_id}", status_code=204, tags=["analyses"],
                responses={404: {"model": ErrorBody}, **_AUTH_ERRORS}, dependencies=[Depends(require_admin)])
    async def delete_analysis(analysis_id: str) -> Response:
        """Delete an analysis, its upload and its artifacts (a running one is stopped)."""
        if not valid_id(analysis_id):
            raise HTTPException(404, "no such analysis")
        row = db.delete_analysis(analysis_id)
        if row is None:
            raise HTTPException(404, "no such analysis")
        jobs.cancel(analysis_id)
        await run_in_threadpool(storage.remove_analysis, analysis_id, row["upload"])
        log.info("analysis %s: deleted", analysis_id)
        return Response(status_code=204)

    # ------------------------------------------------------------------------------- contributions
    def contribution_out(c: dict, pre: str) -> Contribution:
        return Contribution(**{k: c[k] for k in ("id", "created", "status", "decided", "kind", "format", "size",
                                                 "deidentified", "diagnosis", "probe", "source", "license",
                                                 "case_ref", "findings", "severity", "note")},
                            burned_in_annotation=c.get("burned_in"),
                            file_url=f"{pre}/api/contributions/{c['id']}/file")

    @app.get("/api/contributions/options", response_model=ContributionOptions, tags=["contributions"])
    async def contribution_options() -> ContributionOptions:
        """The contribution form's choices: diagnoses, probes, licenses, findings, severity scores."""
        return ContributionOptions(**contrib.options())

    contrib_props = {
        "file": _FILE_PROP,
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

    @app.post("/api/contributions", status_code=201, response_model=ContributionCreated, tags=["contributions"],
              responses={**_ERRORS, 422: {"model": ErrorBody, "description": "A form field is missing or wrong"}},
              openapi_extra=_multipart_doc(contrib_props, ["file", "diagnosis", "source", "license", "consent"]))
    async def create_contribution(request: Request) -> ContributionCreated:
        """Contribute a labelled recording to the dataset queue (reviewed by an admin before export)."""
        form = await receive_form(request, storage, max_file_bytes=cfg.max_upload_bytes,
                                  text_fields=contrib.FORM_FIELDS, max_field_bytes=1024)
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
        db.add_contribution({"id": id_, "kind": info.kind, "format": f.media.name, "ext": f.media.ext,
                             "size": dest.stat().st_size, "file": storage.relative(dest), "deidentified": int(deid),
                             "burned_in": burned_in, **fields})
        log.info("contribution %s: received (%s, %d bytes)", id_, f.media.name, dest.stat().st_size)
        return ContributionCreated(id=id_, status="pending", deidentified=deid)

    @app.get("/api/contributions", response_model=ContributionPage, tags=["contributions"],
             responses=_AUTH_ERRORS, dependencies=[Depends(require_admin)])
    async def list_contributions(request: Request, status: Optional[str] = Query(None, pattern="^(pending|accepted|rejected)$"),
                                 offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500)) -> ContributionPage:
        """The contribution queue (admin)."""
        total, rows = db.list_contributions(status, offset, limit)
        pre = prefix(request)
        return ContributionPage(total=total, offset=offset, limit=limit, items=[contribution_out(c, pre) for c in rows])

    def get_contribution(cid: str) -> dict:
        c = db.get_contribution(cid) if valid_id(cid) else None
        if c is None:
            raise HTTPException(404, "no such contribution")
        return c

    @app.get("/api/contributions/{contribution_id}/file", tags=["contributions"],
             responses={404: {"model": ErrorBody}, **_AUTH_ERRORS}, dependencies=[Depends(require_admin)])
    async def contribution_file(contribution_id: str):
        """The contributed recording, for review (admin)."""
        c = get_contribution(contribution_id)
        path = storage.resolve(c["file"])
        if not path.is_file():
            raise HTTPException(404, "the file is missing")
        return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                            filename=f"contribution_{c['id']}{c['ext']}")

    async def decide(contribution_id: str, status: str, decision: Optional[Decision], request: Request):
        get_contribution(contribution_id)
        c = db.decide_contribution(contribution_id, status, decision.note if decision else None)
        log.info("contribution %s: %s", contribution_id, status)
        return contribution_out(c, prefix(request))

    @app.post("/api/contributions/{contribution_id}/accept", response_model=Contribution, tags=["contributions"],
              responses={404: {"model": ErrorBody}, **_AUTH_ERRORS}, dependencies=[Depends(require_admin)])
    async def accept_contribution(contribution_id: str, request: Request,
                                  decision: Optional[Decision] = None) -> Contribution:
        """Accept a contribution: `pocovid contributions export` will include it (admin)."""
        return await decide(contribution_id, "accepted", decision, request)

    @app.post("/api/contributions/{contribution_id}/reject", response_model=Contribution, tags=["contributions"],
              responses={404: {"model": ErrorBody}, **_AUTH_ERRORS}, dependencies=[Depends(require_admin)])
    async def reject_contribution(contribution_id: str, request: Request,
                                  decision: Optional[Decision] = None) -> Contribution:
        """Reject a contribution (it stays in the queue, marked rejected) (admin)."""
        return await decide(contribution_id, "rejected", decision, request)

    return app
