"""The service itself: liveness and settings, the model's description, and how results are shown."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool

from pocovid import __version__
from pocovid.analysis.display import display_spec
from pocovid.analysis.exam_report import lung_diagram
from pocovid.errors import PocovidError
from pocovid.server.deps import Config, Db, Models
from pocovid.server.schemas import DisplayInfo, ErrorBody, Health, ModelInfo, QueueCounts

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


@router.get("/display", response_model=DisplayInfo)
async def display(models: Models) -> DisplayInfo:
    """How results are shown, as the report shows them: the clinician's words for classes, findings
    and severity, the class colours (of the model's classes), the heat map's colours and the exam's lung
    diagram."""
    try:
        classes = (await run_in_threadpool(models.info))["classes"]
    except PocovidError:
        classes = None  # the known classes' colours; the model's own when it loads
    return DisplayInfo(**display_spec(classes), lung_diagram=lung_diagram())
