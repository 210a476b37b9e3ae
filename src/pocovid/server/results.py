"""An analysis result as the server reads it: the one shape `pocovid.analysis.analyze_recording`
returns (its result.json, docs/analyze.md), never guessed.

    result_dict(result)            # AnalysisResult (or a dict) -> the result.json dict
    summarize_result(result)       # diagnosis, probability and flags for the history and the status
    artifact_names(result, folder) # the files it declares (and result.json): the only ones served
    links_for(result, files)       # URLs of the main artifacts, from the declared fields

The artifact fields: top-level `report`, `timeline`, `overlay_video` (a file name in the analysis
folder, or null) and `key_frames[*].image`. Nothing else in the result names a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ARTIFACT_FIELDS = ("report", "timeline", "overlay_video")
RESULT_JSON = "result.json"


def result_dict(result: Any) -> dict:
    """The result as its result.json dict: `AnalysisResult.to_json()` for the declared result of
    `pocovid.analysis`; a dict as it is (analyses injected by tests return one). TypeError otherwise."""
    if isinstance(result, dict):
        return result
    to_json = getattr(type(result), "to_json", None)
    if to_json is None:
        raise TypeError(f"the analysis returned {type(result).__name__}, not a result")
    return result_dict(to_json(result))


def summarize_result(result: dict | None) -> dict:
    """Diagnosis, its probability and the flags of a result (`prediction.label`,
    `prediction.probabilities`, `prediction.withheld`, `review_recommended`, `out_of_distribution`).
    Out of distribution: the label is withheld, never shown as a diagnosis (docs/analyze.md)."""
    out = {"diagnosis": None, "probability": None, "withheld": None, "review_recommended": None, "not_lung": None}
    if not isinstance(result, dict):
        return out
    pred = result.get("prediction") or {}
    ood = result.get("out_of_distribution")
    review = result.get("review_recommended")
    out["not_lung"] = None if ood is None else bool(ood)
    out["review_recommended"] = None if review is None else bool(review)
    out["withheld"] = bool(pred.get("withheld") or ood)
    if out["withheld"]:
        return out
    label = pred.get("label")
    probs = pred.get("probabilities") or {}
    out["diagnosis"] = None if label is None else str(label)
    if label in probs and probs[label] is not None:
        out["probability"] = float(probs[label])
    return out


def declared_artifacts(result: dict) -> list[str]:
    """The file names the result declares, in its order (report, timeline, overlay video, key frames)."""
    names: list[Any] = [result.get(k) for k in ARTIFACT_FIELDS]
    names += [k.get("image") for k in result.get("key_frames") or [] if isinstance(k, dict)]
    return [n for n in names if isinstance(n, str)]


def is_plain_name(name: str) -> bool:
    """A file name directly inside a folder: no separator, not absolute, not '.' or '..', no NUL."""
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
            and "\x00" not in name and not os.path.isabs(name))


def artifact_names(result: dict, out_dir: Path) -> list[str]:
    """The declared artifacts that exist in `out_dir` (plain names only), plus result.json, sorted.
    These, and only these, are served under /api/analyses/{id}/files/."""
    names = [*declared_artifacts(result), RESULT_JSON]
    # os.path.isfile: False (not an error) for a name the file system refuses, e.g. too long
    return sorted({n for n in names if is_plain_name(n) and os.path.isfile(Path(out_dir) / n)})


def links_for(result: dict, files: dict[str, str]) -> dict:
    """URLs of the main artifacts: `files` maps the served names to their URLs. The analysis writes
    no separate source video (the recording itself is at /api/analyses/{id}/source)."""
    def url(field: str) -> str | None:
        name = result.get(field)
        return files.get(name) if isinstance(name, str) else None

    key_frames = [k.get("image") for k in result.get("key_frames") or [] if isinstance(k, dict)]
    return {"report": url("report"), "timeline": url("timeline"), "overlay_video": url("overlay_video"),
            "source_video": None, "result_json": files.get(RESULT_JSON),
            "key_frames": [files[n] for n in key_frames if isinstance(n, str) and n in files]}
