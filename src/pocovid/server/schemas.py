"""Request and response models of the API (they make /openapi.json and /docs)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

from pocovid.analysis.result import AnalysisResult

Status = Literal["queued", "running", "done", "failed"]


class ErrorBody(BaseModel):
    detail: str = Field(..., description="One-line reason")


class AnalysisCreated(BaseModel):
    id: str
    status: Status = "queued"
    url: str = Field(..., description="Poll this for the status and, when done, the result")


class AnalysisLinks(BaseModel):
    """URLs of the main artifacts of a finished analysis (null when the analysis did not write one)."""

    report: Optional[str] = None
    timeline: Optional[str] = None
    overlay_video: Optional[str] = None
    source_video: Optional[str] = Field(None, description="A copy of the recording that browsers play (the scan "
                                                          "region, no overlay), when the analysis wrote one: for "
                                                          "containers browsers do not play (AVI, MPEG, ...)")
    result_json: Optional[str] = None
    key_frames: list[str] = Field(default_factory=list)


class AnalysisSummary(BaseModel):
    id: str
    status: Status
    created: float = Field(..., description="Upload time, seconds since the epoch (UTC)")
    kind: str = Field(..., description="video, image or dicom (read from the content)")
    format: str
    size: int = Field(..., description="Bytes stored")
    progress: float = 0.0
    stage: str = ""
    error: Optional[str] = None
    diagnosis: Optional[str] = Field(None, description="Predicted class, when done (null when withheld)")
    probability: Optional[float] = Field(None, description="Its probability, when done")
    withheld: Optional[bool] = Field(None, description="No diagnosis: the input is out of distribution")
    review_recommended: Optional[bool] = None
    not_lung: Optional[bool] = None
    url: str


class AnalysisStatus(AnalysisSummary):
    started: Optional[float] = None
    finished: Optional[float] = None
    attempts: int = 0
    deidentified: bool = Field(False, description="A DICOM upload, de-identified before it was stored")
    model: Optional[str] = None
    result: Optional[AnalysisResult] = Field(None, description="When done: the declared result (result.json, as "
                                                               "`pocovid analyze --json` writes it; artifact paths "
                                                               "relative to the analysis; GET /api/schema/result). "
                                                               "Null, with a note in `error`, when the stored result "
                                                               "was written under another schema_version")
    files: dict[str, str] = Field(default_factory=dict, description="Artifact name -> URL")
    links: AnalysisLinks = Field(default_factory=AnalysisLinks)


class AnalysisPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[AnalysisSummary]


class QueueCounts(BaseModel):
    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    model_loaded: bool
    model_error: Optional[str] = None
    workers: int
    analyses: QueueCounts
    max_upload_mb: float
    token_required: bool = Field(..., description="Deletion and contributions admin need a bearer token")


class ModelInfo(BaseModel):
    name: str
    backbone: str
    classes: list[str]
    n_heads: int = 1
    input_size: Optional[int] = None
    version: Optional[str] = Field(None, description="pocovid version that wrote the model file")
    format_version: Optional[int] = None
    created: Optional[str] = None
    data_fingerprint: Optional[str] = None
    training_config: dict[str, Any] = Field(default_factory=dict)
    metrics: Optional[dict[str, Any]] = Field(None, description="Cross-validation figures stored in the model file")


class HeatMap(BaseModel):
    name: str = Field(..., description="The heat map of every heatmap drawn (viridis)")
    stops: list[str] = Field(..., description="Its colours, low to high, evenly spaced (e.g. a CSS gradient)")


class DisplayInfo(BaseModel):
    """How results are shown (pocovid.analysis.display): the same words and colours as the report."""

    class_names: dict[str, str] = Field(..., description="Class key -> the clinician's word (regular -> healthy)")
    class_colours: dict[str, str] = Field(..., description="Class key -> colour (Okabe-Ito, colour-blind safe)")
    withheld_colour: str = Field(..., description="The grey of probabilities shown for transparency only")
    finding_names: dict[str, str]
    severity_words: list[str] = Field(..., description="Severity level 0..3 in words")
    severity_colours: list[str] = Field(default_factory=list, description="Severity level 0..3 -> fill colour")
    severity_ink: list[str] = Field(default_factory=list, description="Severity level 0..3 -> text colour on it")
    heatmap: HeatMap


class Choice(BaseModel):
    value: str
    label: str


class ContributionOptions(BaseModel):
    diagnoses: list[Choice]
    probes: list[Choice]
    licenses: list[str]
    findings: list[Choice]
    severity: list[int]


class ContributionCreated(BaseModel):
    id: str
    status: Literal["pending"] = "pending"
    deidentified: bool = False


class Contribution(BaseModel):
    id: str
    created: float
    status: Literal["pending", "accepted", "rejected"]
    decided: Optional[float] = None
    kind: str
    format: str
    size: int
    deidentified: bool
    burned_in_annotation: Optional[str] = Field(None, description="The DICOM file's BurnedInAnnotation (YES: "
                                                                 "text in the pixels; check before accepting)")
    diagnosis: str
    probe: str
    source: str
    license: str
    case_ref: Optional[str] = None
    findings: dict[str, Optional[int]]
    severity: Optional[int] = None
    note: Optional[str] = None
    file_url: str


class ContributionPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[Contribution]


class Decision(BaseModel):
    note: Optional[str] = Field(None, max_length=500, description="Reviewer's note (no patient data)")
