"""An analysis result as the server reads it: the declared `pocovid.analysis.result.AnalysisResult`
(result.json, docs/analyze.md), validated when it is written and again when it is read back.

    stored_result(row_result)      # the stored JSON -> (AnalysisResult, None) or (None, why not)
    summarize_result(result)       # diagnosis, probability and flags for the history and the status
    artifact_names(result, folder) # the files it declares (and result.json) that exist: the only ones served
    links_for(result, files)       # URLs of the main artifacts, from the declared fields

The artifact fields: top-level `report`, `timeline`, `overlay_video`, `playback_video` (a file name
in the analysis folder, or null) and `key_frames[*].image` (`AnalysisResult.artifacts()`). Nothing else in the
result names a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pocovid.analysis.result import SCHEMA_VERSION, AnalysisResult

RESULT_JSON = "result.json"


def stored_result(data: Any) -> tuple[AnalysisResult | None, str | None]:
    """The stored result JSON validated back into an `AnalysisResult`; (None, a one-line note) when
    there is none or it does not validate (written by an older pocovid, another schema_version)."""
    if data is None:
        return None, None
    try:
        return AnalysisResult.model_validate(data), None
    except ValidationError as e:
        version = data.get("schema_version") if isinstance(data, dict) else None
        return None, (f"the stored result (schema_version {version}) does not match this server's result schema "
                      f"(schema_version {SCHEMA_VERSION}; {e.error_count()} difference(s)): it is not shown; "
                      f"upload the recording again to analyse it with this version")


def summarize_result(result: AnalysisResult | None) -> dict:
    """Diagnosis, its probability and the flags of a result (`prediction.label`,
    `prediction.probabilities`, `prediction.withheld`, `review_recommended`, `out_of_distribution`).
    Out of distribution: the label is withheld, never shown as a diagnosis (docs/analyze.md)."""
    out = {"diagnosis": None, "probability": None, "withheld": None, "review_recommended": None, "not_lung": None}
    if result is None:
        return out
    pred = result.prediction
    out["not_lung"] = result.out_of_distribution
    out["review_recommended"] = result.review_recommended
    out["withheld"] = bool(pred.withheld or result.out_of_distribution)
    if out["withheld"]:
        return out
    out["diagnosis"] = pred.label
    p = pred.probabilities.get(pred.label)
    out["probability"] = None if p is None else float(p)
    return out


def is_plain_name(name: str) -> bool:
    """A file name directly inside a folder: no separator, not absolute, not '.' or '..', no NUL."""
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
            and "\x00" not in name and not os.path.isabs(name))


def artifact_names(result: AnalysisResult, out_dir: Path) -> list[str]:
    """The declared artifacts (`result.artifacts()`, result.json included) that exist in `out_dir`
    (plain names only), sorted. These, and only these, are served under /api/analyses/{id}/files/."""
    # os.path.isfile: False (not an error) for a name the file system refuses, e.g. too long
    return sorted({n for n in result.artifacts() if is_plain_name(n) and os.path.isfile(Path(out_dir) / n)})


def links_for(result: AnalysisResult | None, files: dict[str, str]) -> dict:
    """URLs of the main artifacts: `files` maps the served names to their URLs. `source_video` is
    the analysis' browser-playable copy of the recording (`playback_video`, written for containers
    browsers do not play); the recording itself is at /api/analyses/{id}/source."""
    def url(name: str | None) -> str | None:
        return files.get(name) if name else None

    links = {"report": None, "timeline": None, "overlay_video": None, "source_video": None,
             "result_json": files.get(RESULT_JSON), "key_frames": []}
    if result is not None:
        links.update(report=url(result.report), timeline=url(result.timeline), overlay_video=url(result.overlay_video),
                     source_video=url(result.playback_video),
                     key_frames=[files[k.image] for k in result.key_frames if k.image in files])
    return links
