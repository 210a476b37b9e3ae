"""The declared result of a bedside exam (all of a patient's lung zones): what exam.json, `exam --json`
and (later) the service carry. Pydantic models, like `AnalysisResult`, so the JSON Schema comes from
the code:

    exam.to_json()                   # the exam.json dict (plain JSON)
    ExamResult.model_validate(d)     # back from exam.json
    exam_schema()                    # JSON Schema (`pocovid schema --exam`)

File names are base names only; paths (a clip's folder, report, key frame) are relative to the exam's
folder. `EXAM_SCHEMA_VERSION` goes up whenever a field changes meaning, appears or goes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pocovid.analysis.result import ModelSummary, Severity

EXAM_SCHEMA_VERSION = 2  # 2: zone severity and the LUS score from the clips' median severity level (was argmax)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ExamClip(_Model):
    """One recording of the exam: its zone and a summary of its own analysis (the whole analysis is in
    `folder`/result.json and `folder`/report.html)."""

    file: str = Field(description="the recording's base name")
    zone: str | None = Field(description="BLUE point (R1..R3, L1..L3); null: unassigned")
    zone_source: Literal["name", "csv", "option"] | None = Field(
        description="where the zone came from: the file name, the zones CSV, the --zones option")
    status: Literal["ok", "failed"]
    error: str | None = Field(None, description="failed: one line, the file's base name and why")
    folder: str | None = Field(None, description="the clip's analysis folder, relative to the exam folder")
    report: str | None = Field(None, description="the clip's report.html, relative to the exam folder")
    label: str | None = Field(None, description="the clip's most likely class (null: failed, or withheld)")
    probabilities: dict[str, float] | None = None
    withheld: bool = Field(False, description="out of distribution: no diagnosis, left out of the exam's verdict, "
                                              "severity and findings")
    counted: bool = Field(False, description="counted toward the exam's verdict (analysed and not withheld)")
    review_recommended: bool = False
    review_reasons: list[str] = Field(default_factory=list)
    findings: dict[str, float] | None = None
    severity: Severity | None = None
    key_frame: str | None = Field(None, description="the clip's first key frame with its heatmap (PNG), relative "
                                                    "to the exam folder")


class ZoneResult(_Model):
    """One zone of the protocol, or what its clips show."""

    zone: str
    side: Literal["right", "left"] = Field(description="the patient's side")
    status: Literal["scored", "missing", "not_scored"] = Field(
        description="scored: at least one clip analysed and not withheld; missing: no recording of this zone; "
                    "not_scored: recordings, but each failed or was withheld")
    clips: list[str] = Field(description="base names of the zone's recordings, in input order")
    severity: int | None = Field(None, description="severity 0-3 (Soldati): the worst level of the zone's counted "
                                                   "clips; null: not scored or no severity head")
    severity_expected: float | None = Field(None, description="expected severity of the clip that gave `severity`")
    severity_clip: str | None = Field(None, description="the clip that gave `severity` (and the key frame)")
    findings: dict[str, float] | None = Field(None, description="probability of each finding: the highest over "
                                                                "the zone's counted clips")
    label: str | None = Field(None, description="most likely class of `severity_clip`")
    key_frame: str | None = Field(None, description="key frame with heatmap of `severity_clip`, relative to the "
                                                    "exam folder")
    report: str | None = Field(None, description="report.html of `severity_clip`, relative to the exam folder")


class LusScore(_Model):
    score: int | None = Field(description="sum of the scored zones' severities; null: no zone scored, or the "
                                          "model has no severity head")
    max_possible: int = Field(description="3 x the protocol's zones (18 for six BLUE points)")
    score_expected: float | None = Field(None, description="the same zones' expected severities summed "
                                                           "(pocovid.models.exam.lus_score: several clips in a zone, "
                                                           "their mean): what evaluation measures")
    n_zones: int = Field(description="zones in the protocol")
    zones_scored: list[str]
    zones_missing: list[str] = Field(description="zones with no recording")
    zones_not_scored: list[str] = Field(description="zones whose recordings all failed or were withheld")
    complete: bool = Field(description="every zone of the protocol is scored")
    rule: str


class Driver(_Model):
    zone: str = Field(description="a BLUE point, or 'unassigned: <file>'")
    effect: float = Field(description="how much lower the diagnosis's probability would be if this zone's clips "
                                      "looked like the patient's other clips (their mean probabilities; same "
                                      "combination rule); with one zone only: its probability minus uniform")


class ExamVerdict(_Model):
    """The exam-level diagnosis from every counted clip, combined by the model file's exam method."""

    label: str
    probabilities: dict[str, float]
    method: str = Field(description="exam combination (pocovid.models.exam): mean, max, noisy_or, logistic")
    method_source: str
    n_clips: int = Field(description="clips counted (analysed and not withheld)")
    uncertainty: float = Field(description="entropy of the exam probabilities divided by ln(classes): 0 = certain, "
                                           "1 = uniform")
    drivers: list[Driver] = Field(description="zones whose clips raise the diagnosis's probability, strongest first")


class ExamResult(_Model):
    """A patient's lung zones analysed together (see docs/analyze.md#exam)."""

    schema_version: int = EXAM_SCHEMA_VERSION
    kind: Literal["exam"] = "exam"
    status: Literal["ok"] = "ok"
    patient: str | None = Field(None, description="the patient id the file names give (patient_<ID>_...)")
    protocol: str = "BLUE"
    protocol_zones: list[str]
    model: str
    model_info: ModelSummary
    pocovid_version: str
    created: str
    notice: str
    clips: list[ExamClip]
    zones: list[ZoneResult] = Field(description="the protocol's zones, in protocol order")
    unassigned: list[str] = Field(description="base names of recordings with no zone (analysed, counted toward "
                                              "the verdict, not the LUS score)")
    lus: LusScore
    verdict: ExamVerdict | None = Field(description="null: no clip could be counted (see `no_verdict`)")
    no_verdict: str | None = Field(None, description="why there is no verdict")
    review_recommended: bool
    review_reasons: list[str]
    failures: list[str] = Field(description="one line per recording that could not be analysed")
    notes: list[str] = Field(default_factory=list)
    report: str | None = Field(None, description="file name of the exam report (exam.html)")
    timings: dict[str, float] = Field(default_factory=dict)

    def to_json(self) -> dict:
        """The exam.json dict."""
        return self.model_dump(mode="json")


def exam_schema() -> dict:
    """JSON Schema of exam.json (`ExamResult`)."""
    return ExamResult.model_json_schema()
