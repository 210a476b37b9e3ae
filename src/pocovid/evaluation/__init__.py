"""Metrics, plots and reports for frame- and clip-level predictions (see `docs/metrics.md`).

Shared by training (out-of-fold predictions) and `pocovid evaluate`. No torch here.
"""

from pocovid.evaluation.metrics import (
    AGGREGATION_METHODS,
    aggregate_frames,
    calibration,
    classification_metrics,
    clip_labels,
    clip_predictions,
    evaluation_result,
    fold_summary,
    frame_metrics,
    video_metrics,
)
from pocovid.evaluation.report import format_summary, write_evaluation
from pocovid.evaluation.targets import (
    EXAM_METHODS,
    aggregate_exams,
    exam_metrics,
    exam_table,
    finding_metrics,
    severity_metrics,
)

__all__ = [
    "AGGREGATION_METHODS",
    "EXAM_METHODS",
    "aggregate_exams",
    "exam_metrics",
    "exam_table",
    "finding_metrics",
    "severity_metrics",
    "aggregate_frames",
    "calibration",
    "classification_metrics",
    "clip_labels",
    "clip_predictions",
    "evaluation_result",
    "fold_summary",
    "format_summary",
    "frame_metrics",
    "video_metrics",
    "write_evaluation",
]

from pocovid.evaluation.evaluate import evaluate_folder  # noqa: E402  (imports torch only when called)

__all__ += ["evaluate_folder"]
