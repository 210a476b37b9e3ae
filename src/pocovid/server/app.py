"""The FastAPI app: the API (docs/server.md), the web page at /, offline API docs at /docs.

    app = create_app(ServerConfig(data_dir="srv"))                  # the real analysis
    app = create_app(cfg, analyze=stub, model=object())             # tests: any analysis callable

`analyze(path, model, out_dir, config=..., progress=callable(fraction, stage)) -> AnalysisResult` runs
in the worker pool (jobs.py); by default it is `pocovid.analysis.analyze_recording`.

The endpoints live in `routes/` (one router per concern); they reach the shared state (config,
storage, db, jobs, models, exams: set on `app.state` here) through the dependencies of `deps.py`.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from pocovid import __version__
from pocovid.server.config import ServerConfig
from pocovid.server.db import Database
from pocovid.server.deid import remove_stale_temp_files
from pocovid.server.exams import ExamService
from pocovid.server.guard import CsrfGuard
from pocovid.server.headers import SecurityHeaders
from pocovid.server.jobs import JobRunner, ModelProvider, default_analysis_config, real_analyze
from pocovid.server.routes import admin, analyses, contributions, exams, pages, schema
from pocovid.server.storage import Storage
from pocovid.server.uploads import UploadError

log = logging.getLogger("pocovid.server")

DESCRIPTION = ("Decision support for lung point-of-care ultrasound (COVID-19 / bacterial pneumonia / healthy). "
               "**Decision support for trained clinicians, not a diagnosis.** "
               "Upload a recording, poll its analysis, fetch the artifacts; contribute data.")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    """Open the database, clear partial uploads and start the workers (recovering cut-off jobs);
    on stop, interrupt the running jobs (back to the queue) and close the database."""
    st = app.state
    st.db.open()
    n_tmp = st.storage.clean_tmp()
    # nothing runs yet: every temp file a killed de-identification left is stale
    n_tmp += sum(remove_stale_temp_files(d, 0) for d in (st.storage.uploads, st.storage.contributions))
    rec = st.jobs.start()
    st.jobs.call_soon(st.exams.recover)  # exams whose last recording ended with the server
    log.info("pocovid server: data folder ready, %d worker(s); recovered %s; %d partial upload(s) removed",
             st.config.workers, rec, n_tmp)
    try:
        yield
    finally:
        await run_in_threadpool(st.jobs.shutdown, True)
        st.db.close()


async def http_error(request: Request, exc: StarletteHTTPException):
    return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def upload_error(request: Request, exc: UploadError):
    headers = {"Connection": "close"} if exc.status == 413 else None
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)


async def database_busy(request: Request, exc: sqlite3.OperationalError):
    """A database locked by another process (or full) past the busy timeout: 503, never a 500."""
    log.warning("database unavailable for %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": "the service's database is busy or unavailable; try again in a moment"},
                        status_code=503, headers={"Retry-After": "5"})


async def validation_error(request: Request, exc: RequestValidationError):
    """422 with a one-line reason: 'field: message; ...' (at most five)."""
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


def create_app(config: ServerConfig | None = None, *, analyze: Callable | None = None, model: Any = None,
               model_loader: Callable[[str], Any] | None = None,
               analysis_config: Callable[[], Any] | None = None, isolate: bool | None = None) -> FastAPI:
    """The service over `config.data_dir`. `analyze`, `model`, `model_loader` and `analysis_config`
    replace the real analysis, the loaded model, the model loading and the AnalysisConfig factory
    (tests inject stubs here). `isolate`: run each analysis in a child process with its memory
    capped (default: yes for the real analysis, no for an injected one, which then needs not be
    picklable)."""
    cfg = config or ServerConfig.from_env()
    storage = Storage(cfg.data_dir)
    db = Database(storage.db_path, timeout=cfg.db_timeout_s)
    models = ModelProvider(cfg.model, model=model, loader=model_loader, runtime=cfg.runtime)
    exam_service = ExamService(db, storage, models)
    jobs = JobRunner(db, storage, models, analyze=analyze or real_analyze, workers=cfg.workers,
                     config_factory=analysis_config or partial(default_analysis_config, cfg.overlay_video, cfg.runtime),
                     max_attempts=cfg.max_attempts, isolate=analyze is None if isolate is None else isolate,
                     memory_mb=cfg.job_memory_mb, on_finished=exam_service.recording_finished)

    app = FastAPI(title="pocovid", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=DESCRIPTION, swagger_ui_parameters={"validatorUrl": None})
    app.state.config, app.state.storage, app.state.db, app.state.jobs, app.state.models = cfg, storage, db, jobs, models
    app.state.exams = exam_service
    # the last added runs first: Host allow-list, then CORS (preflights), then CSRF, then headers
    app.add_middleware(SecurityHeaders)
    app.add_middleware(CsrfGuard, cors_origins=cfg.cors_origins)
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "X-Requested-With"])
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=cfg.hosts, www_redirect=False)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(sqlite3.OperationalError, database_busy)
    app.add_exception_handler(UploadError, upload_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    pages.mount_static(app)
    for r in (pages, admin, analyses, exams, schema, contributions):
        app.include_router(r.router)
    return app
