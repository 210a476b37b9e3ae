"""Analysing recordings: one diagnosis per clip with its probabilities, uncertainty, an
out-of-distribution guard, key moments with heatmaps, a timeline, an HTML report.

    from pocovid.analysis import AnalysisConfig, analyze_recording, analyze_files
    result = analyze_recording("scan.mp4", "default", "out/scan")          # AnalysisResult
    batch = analyze_files(["a.mp4", "b.dcm"], model, "out")               # BatchResult + out/summary.csv
    batch = analyze_files(paths, model, "out", resume=True, engine="ray")  # finished ones skipped; Ray

Modules: `explain` (CAM, Grad-CAM, heatmaps on the original frame), `uncertainty` (ensemble
disagreement, thresholds from out-of-fold predictions), `ood` (is this lung ultrasound?),
`key_moments` (peaks apart in time, frames that disagree), `report` (timeline, key-frame PNGs,
report.html, overlay video), `analyze` (the pipeline), `batch` (many files, summary.csv, resuming),
`inputs` (folders and CSV lists of recordings, the demo clips), `ray_engine` (one Ray task per
recording). Test and
benchmark helpers (non-lung inputs, a quick phantom-trained model) live in `pocovid.testing`.
Schema: docs/analyze.md.
"""

from pocovid.analysis.analyze import AnalysisConfig, analyze_recording
from pocovid.analysis.batch import analyze_files
from pocovid.analysis.result import SCHEMA_VERSION, AnalysisResult, FailedAnalysis, result_schema
from pocovid.analysis.uncertainty import DEFAULT_UNCERTAINTY, clip_uncertainty, uncertainty_threshold_from_oof

__all__ = ["DEFAULT_UNCERTAINTY", "SCHEMA_VERSION", "AnalysisConfig", "AnalysisResult", "FailedAnalysis",
           "analyze_files", "analyze_recording", "clip_uncertainty", "result_schema", "uncertainty_threshold_from_oof"]
