"""FastAPI dependencies: the service's shared state and the admin check.

`create_app` puts the state on `app.state` (config, storage, db, jobs, models, exams); endpoints ask for
it by type, e.g. `db: Db`, and admin endpoints add `dependencies=[Depends(require_admin)]`.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Callable

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pocovid.server.config import ServerConfig
from pocovid.server.db import Database
from pocovid.server.exams import ExamService
from pocovid.server.jobs import JobRunner, ModelProvider
from pocovid.server.storage import Storage, valid_id

def get_config(request: Request) -> ServerConfig:
    return request.app.state.config


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_storage(request: Request) -> Storage:
    return request.app.state.storage


def get_jobs(request: Request) -> JobRunner:
    return request.app.state.jobs


def get_models(request: Request) -> ModelProvider:
    return request.app.state.models


def get_exams(request: Request) -> ExamService:
    return request.app.state.exams


def url_prefix(request: Request) -> str:
    """The path the app is mounted under ('' at the root): URLs in responses start with it."""
    return request.scope.get("root_path", "").rstrip("/")


Config = Annotated[ServerConfig, Depends(get_config)]
Db = Annotated[Database, Depends(get_db)]
Store = Annotated[Storage, Depends(get_storage)]
Jobs = Annotated[JobRunner, Depends(get_jobs)]
Models = Annotated[ModelProvider, Depends(get_models)]
Exams = Annotated[ExamService, Depends(get_exams)]
UrlPrefix = Annotated[str, Depends(url_prefix)]


def row_or_404(get: Callable[[str], dict | None], row_id: str, what: str) -> dict:
    """The row `get(row_id)` finds for the id in a path; 404 "no such WHAT" for none (or an id that
    is not one of ours: never looked up)."""
    row = get(row_id) if valid_id(row_id) else None
    if row is None:
        raise HTTPException(404, f"no such {what}")
    return row


bearer = HTTPBearer(auto_error=False, description="POCOVID_API_TOKEN of the server")


def require_admin(cfg: Config, cred: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> None:
    """Token check for deletion and contributions admin (hmac.compare_digest). Being on this
    machine proves nothing (a reverse proxy, a rebinding page): without a token configured these
    endpoints answer nobody."""
    if cfg.token is None:
        raise HTTPException(403, "this endpoint needs POCOVID_API_TOKEN set on the server (and sent as "
                                 "Authorization: Bearer <token>)")
    if cred is None or not cred.credentials:
        raise HTTPException(401, "bearer token required (Authorization: Bearer <POCOVID_API_TOKEN>)",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(cred.credentials.strip().encode("utf-8"), cfg.token.encode("utf-8")):
        raise HTTPException(403, "wrong token")
