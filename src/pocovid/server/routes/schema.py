"""The JSON Schema of the declared analysis result (`AnalysisResult`): what `result` of a finished
analysis and its result.json hold. No token: it says nothing about any analysis."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter

from pocovid.analysis.result import result_schema

router = APIRouter(prefix="/api/schema", tags=["analyses"])


@functools.cache
def _schema() -> dict[str, Any]:
    return result_schema()


@router.get("/result", response_model=dict[str, Any])
async def get_result_schema() -> dict[str, Any]:
    """JSON Schema of an analysis result (result.json; `result` of GET /api/analyses/{id}); the
    default of its `schema_version` property is the version this server writes."""
    return _schema()
