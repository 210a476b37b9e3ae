"""The declared result of analysing one recording: what result.json, `analyze --json`, the REST
API and the web page all carry. Pydantic models, so the JSON Schema comes from the code:

    result.to_json()                    # the result.json dict (plain JSON)
    AnalysisResult.model_validate(d)    # back from result.json / the API
    result_schema()                     # JSON Schema (`pocovid schema`, GET /api/schema/result)

`SCHEMA_VERSION` goes up whenever a field changes meaning, appears or goes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 7  # 7: sampling.n_frames_blank (blank frames are no evidence: left out), finding_maps
# 6: severity.level is the ordinal head's median level (was the argmax)
# 5: model_info.runtime (where the frame pass ran)
# 4: playback_video, full_screen, uncertainty.summary; file is the base name; key moments per class
# 3: findings, severity (multi-task heads)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Segment(_Model):
    """A run of consecutive frames whose most likely class is not the clip's."""

    label: str
    start_s: float
    end_s: float
    n_frames: int
    share: float = Field(description="share of the clip's analysed frames")
    mean_probability: float
    sizeable: bool = Field(description="long enough to raise frames_disagree")


class Prediction(_Model):
    label: str = Field(description="the clip's most likely class (shown even when withheld)")
    probabilities: dict[str, float]
    withheld: bool = Field(description="true: out of distribution, no diagnosis is given")
    aggregation: str
    frames_disagree: bool
    disagreement: list[Segment]
    class_share: dict[str, float] = Field(description="share of frames each class wins")


class Uncertainty(_Model):
    score: float
    method: str
    threshold: float
    threshold_source: str
    n_members: int
    description: str
    components: dict[str, float]
    summary: str = Field("", description="the uncertainty in one plain sentence, for people (no figures)")


class OutOfDistribution(_Model):
    reasons: list[str]
    weak_cues: list[str]
    cues: dict[str, Any]


class MediaSummary(_Model):
    kind: str
    format: str
    fps: float | None
    n_frames: int
    width: int
    height: int
    duration_s: float


class Sampling(_Model):
    rate_hz: float | None
    max_frames: int | None
    n_frames_analyzed: int
    n_frames_blank: int = Field(0, description="sampled frames left out because they show nothing (a black first "
                                               "frame; `models.preprocess.is_blank`); when every frame is blank, "
                                               "those are analysed")
    input_size: int
    crop: bool
    grey: bool


class ModelSummary(_Model):
    backbone: str | None
    classes: list[str]
    n_heads: int
    input_size: int
    created: str | None = None
    pocovid_version: str | None = None
    format_version: int | None = None
    data_fingerprint: str | None = None
    cv_video_balanced_accuracy: float | None = None
    has_feature_density: bool = False
    runtime: str | None = Field(None, description="where the frame pass ran: torch, onnx or openvino (the one "
                                                  "`auto` chose, or the one asked for; a runtime not installed "
                                                  "falls back to torch); null: not a recording's frame pass (an "
                                                  "exam's summary) or written before schema version 5")
    precision: str | None = Field(None, description="the frame pass's precision: fp32; int8 when it ran an int8 "
                                                    "graph given with `analyze --graph` (the file's metadata says "
                                                    "which); bf16 on runtime openvino-bf16 where the CPU has "
                                                    "bfloat16; null: not a recording's frame pass, or written "
                                                    "before pocovid recorded it (fp32)")
    graph: str | None = Field(None, description="the file name of the exported ONNX graph the frame pass ran "
                                                "(`analyze --graph`); null: the runtime's own graph of the model, "
                                                "or torch")
    graph_sha256: str | None = Field(None, description="SHA-256 of that graph file (`--resume` redoes a result "
                                                       "made with another graph or precision)")


class Severity(_Model):
    """The clip's lung severity (Soldati score 0-3) from the model's ordinal head."""

    expected: float = Field(description="expected severity: sum_k k * probability_k, mean over frames and members")
    probabilities: list[float] = Field(description="probability of each level 0..3, mean over frames and members")
    level: int = Field(description="the ordinal head's median level: the first level whose cumulative "
                                   "probability reaches 0.5 (the number of thresholds with P(y > k) > 0.5), "
                                   "not the argmax (which skips the middle levels of a weak ordinal head)")


class FrameResult(_Model):
    index: int
    time_s: float
    probabilities: dict[str, float]
    member_std: float = Field(description="ensemble members' standard deviation of the predicted class's "
                                             "probability (0 = all members agree)")
    density_d2: float | None = None


class KeyFrame(_Model):
    rank: int
    index: int
    time_s: float
    label: str = Field(description="the class this key moment and its heatmap are evidence for: the predicted "
                                   "class, or another class that a run of frames supports")
    image: str = Field(description="file name in the result's folder")
    probabilities: dict[str, float]
    evidence: float = Field(description="the frame's probability of `label`")
    heat_inside_region: float | None


#: a finding whose clip probability reaches this is one the result reads in the clip: its map is drawn
FINDING_MAP_MIN = 0.5


class FindingMap(_Model):
    finding: str
    probability: float = Field(description="the clip's probability of the finding (as in `findings`)")
    index: int = Field(description="the frame shown: of the key frames, the one where the finding is most probable")
    time_s: float
    frame_probability: float = Field(description="that frame's probability of the finding")
    image: str = Field(description="file name in the result's folder")
    heat_inside_region: float | None


class AnalysisResult(_Model):
    """One recording analysed (see docs/analyze.md)."""

    schema_version: int = SCHEMA_VERSION
    status: Literal["ok"] = "ok"
    file: str = Field(description="the recording's file name (the whole path as given only with show_path)")
    model: str
    model_info: ModelSummary
    pocovid_version: str
    created: str
    notice: str
    prediction: Prediction
    findings: dict[str, float] | None = Field(
        None, description="probability that the clip shows each finding (mean over frames and ensemble members); "
                          "null: the model has no findings head")
    severity: Severity | None = Field(None, description="null: the model has no severity head")
    uncertainty: Uncertainty
    review_recommended: bool
    review_reasons: list[str]
    out_of_distribution: bool
    ood: OutOfDistribution
    region: dict[str, Any]
    media: MediaSummary
    sampling: Sampling
    explainer: str
    explainer_description: str
    key_frame_min_gap_s: float
    frames: list[FrameResult]
    key_frames: list[KeyFrame]
    finding_maps: list[FindingMap] = Field(
        default_factory=list, description=f"where the model sees each finding it reads in the clip (probability >= "
                                          f"{FINDING_MAP_MIN}): the class activation map of the finding's head on a "
                                          "key frame; none out of distribution")
    timeline: str | None = Field(None, description="file name of the timeline plot")
    report: str | None = Field(None, description="file name of the HTML report")
    overlay_video: str | None = Field(None, description="file name of the overlay video")
    playback_video: str | None = Field(None, description="file name of a copy of the recording that browsers play "
                                                         "(H.264 mp4), written with the overlay video when the "
                                                         "recording's own container is not (AVI, MPEG, GIF, ...)")
    full_screen: bool = Field(False, description="key frames and videos show the whole screen; false: the scan "
                                                 "region only (what lies around it, e.g. burnt-in names, is not "
                                                 "copied)")
    timings: dict[str, float] = Field(default_factory=dict)

    def artifacts(self) -> list[str]:
        """File names this result wrote into its folder (result.json included)."""
        names = ["result.json", self.report, self.timeline, self.overlay_video, self.playback_video]
        names += [k.image for k in self.key_frames] + [m.image for m in self.finding_maps]
        return [n for n in names if n]

    def to_json(self) -> dict:
        """The result.json dict."""
        return self.model_dump(mode="json")


class FailedAnalysis(_Model):
    """A recording that could not be analysed (an entry of `analyze --json` and the batch)."""

    schema_version: int = SCHEMA_VERSION
    status: Literal["failed"] = "failed"
    file: str
    reason: str = Field(description="one line: the file and why")

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


def result_schema() -> dict:
    """JSON Schema of result.json (`AnalysisResult`)."""
    return AnalysisResult.model_json_schema()
