"""Request and response models of the API (they make /openapi.json and /docs)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

from pocovid.analysis.exam_result import ExamResult
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
    exam: Optional[str] = Field(None, description="The exam this recording belongs to (GET /api/exams/{exam})")
    zone: Optional[str] = Field(None, description="Its zone in that exam (a BLUE point; null: unassigned)")
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


class ZoneCircle(BaseModel):
    x: float
    y: float
    r: float


class LungDiagram(BaseModel):
    """The exam's lung diagram as exam.html draws it (pocovid.analysis.exam_report.lung_diagram): a front
    view as you face the patient, the patient's right on the viewer's left."""

    width: int
    height: int
    lung_path: str = Field(..., description="SVG path of the patient's right lung; the left one is its mirror "
                                            "image (translate(width, 0) scale(-1, 1))")
    zones: dict[str, ZoneCircle] = Field(..., description="BLUE point -> its circle")


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
    lung_diagram: Optional[LungDiagram] = Field(None, description="The exam's lung diagram (zones, outline)")


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


# ------------------------------------------------------------------------------------------ exams

ExamState = Literal["open", "running", "done", "failed"]


class ExamCreate(BaseModel):
    """A new exam (the JSON body of POST /api/exams; every field optional)."""

    patient: Optional[str] = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\- ]*$",
                                   description="Your reference for the patient (a pseudonym or record number; "
                                               "letters, digits, _ . - and spaces). Stored and shown; never a name")
    protocol: Literal["BLUE"] = Field("BLUE", description="The scanning protocol: BLUE's six points (R1..R3, L1..L3)")


class ExamCreated(BaseModel):
    id: str
    status: ExamState = "open"
    url: str = Field(..., description="Poll this for the exam's recordings and, when done, its result")
    recordings_url: str = Field(..., description="POST the recordings here (multipart, field `file`, repeated)")


class ExamRecording(BaseModel):
    """One recording of an exam: its zone and its own analysis (summary; the whole of it at `url`)."""

    id: str
    file: str = Field(..., description="The stored name (<id>.<ext>); the client's file name is not kept")
    zone: Optional[str] = Field(None, description="BLUE point (R1..R3, L1..L3); null: unassigned")
    zone_source: Optional[Literal["name", "option"]] = Field(
        None, description="name: read from the uploaded file's name; option: given (the `zones` field, or changed "
                          "with PATCH)")
    status: Status
    created: float
    kind: str
    format: str
    size: int
    progress: float = 0.0
    stage: str = ""
    error: Optional[str] = None
    diagnosis: Optional[str] = Field(None, description="The recording's own most likely class (null when withheld)")
    probability: Optional[float] = None
    withheld: Optional[bool] = Field(None, description="Out of distribution: no diagnosis, left out of the exam")
    review_recommended: Optional[bool] = None
    not_lung: Optional[bool] = None
    url: str = Field(..., description="The recording's analysis (GET /api/analyses/{id})")
    report: Optional[str] = Field(None, description="URL of the recording's report, when done")
    key_frame: Optional[str] = Field(None, description="URL of its key frame with the heatmap, when done")


class ExamSummary(BaseModel):
    id: str
    created: float
    updated: float
    status: ExamState = Field(..., description="open: no recording yet; running: recordings being analysed (or a "
                                               "change being concluded); done: `result` holds the exam; failed: the "
                                               "exam could not be concluded (`error`)")
    patient: Optional[str] = None
    protocol: str = "BLUE"
    n_recordings: int
    counts: QueueCounts = Field(..., description="The recordings by status")
    progress: float = Field(0.0, description="0-1 over the recordings (finished ones count whole)")
    error: Optional[str] = None
    diagnosis: Optional[str] = Field(None, description="The exam's verdict, when done (null: no verdict)")
    probability: Optional[float] = None
    no_verdict: Optional[str] = Field(None, description="Why there is no verdict (e.g. every recording withheld)")
    lus_score: Optional[int] = None
    lus_max: Optional[int] = None
    review_recommended: Optional[bool] = None
    url: str


class ExamLinks(BaseModel):
    report: Optional[str] = Field(None, description="exam.html: the lung diagram, zone table and verdict")
    exam_json: Optional[str] = None


class ExamStatus(ExamSummary):
    recordings: list[ExamRecording]
    result: Optional[ExamResult] = Field(None, description="When done: the declared exam result (exam.json, as "
                                                           "`pocovid exam --json` writes it; paths relative to the "
                                                           "exam; `pocovid schema --exam`)")
    files: dict[str, str] = Field(default_factory=dict, description="Served name -> URL: exam.html, exam.json and "
                                                                    "each recording's artifacts (<id>/<name>)")
    links: ExamLinks = Field(default_factory=ExamLinks)


class ExamPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[ExamSummary]


class RefusedRecording(BaseModel):
    index: int = Field(..., description="Its place among the upload's files (0-based)")
    name: str = Field(..., description="The file name as sent (echoed here only; never stored)")
    reason: str


class RecordingsAdded(BaseModel):
    exam: str
    url: str
    added: list[ExamRecording]
    names: list[str] = Field(default_factory=list, description="The file names as sent, one per added recording "
                                                               "(echoed here only; never stored)")
    refused: list[RefusedRecording] = Field(default_factory=list,
                                            description="Files left out (not a recording pocovid reads, empty, or "
                                                        "a DICOM file that cannot be de-identified)")


class ZoneChange(BaseModel):
    """PATCH body: the recording's new zone (null or '-': unassigned)."""

    zone: Optional[str] = Field(..., max_length=16, description="A BLUE point (R1..R3, L1..L3), or null")
