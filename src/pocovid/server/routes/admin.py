"""The service itself: liveness and settings, and the model's description."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool

from pocovid import __version__
from pocovid.errors import PocovidError
from pocovid.server.deps import Config, Db, Models
from pocovid.server.schemas import ErrorBody, Health, ModelInfo, QueueCounts

router = APIRouter(prefix="/api", tags=["service"])


@router.get("/health", response_model=Health)
def health(cfg: Config, db: Db, models: Models) -> Health:
    """Liveness, queue counts and settings (never loads the model)."""
    return Health(version=__version__, model_loaded=models.loaded, model_error=models.error, workers=cfg.workers,
                  analyses=QueueCounts(**db.count_by_status()), max_upload_mb=cfg.max_upload_mb,
                  token_required=cfg.token is not None)


@router.get("/model", response_model=ModelInfo,
            responses={503: {"model": ErrorBody, "description": "The model cannot be loaded"}})
async def model_info(models: Models) -> ModelInfo:
    """The model: name, classes, versions and its cross-validation figures (model file metadata)."""
    try:
        info = await run_in_threadpool(models.info)
    except PocovidError as e:
        raise HTTPException(503, f"model not available: {e}") from None
    return ModelInfo(**info)
