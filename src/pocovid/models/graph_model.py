"""A trained model run from its cached exported graph, without PyTorch: `GraphModel`.

    model = cached_graph_model("model.pt", "openvino")   # None unless an earlier run left its graph
    rec = stream_predict("scan.mp4", model, runtime="openvino")

Importing PyTorch takes ~1 s of the ~4 s that `pocovid analyze` may take on a 10 s clip, and a
frame pass on ONNX Runtime or OpenVINO needs nothing from it: the runtime reads the exported graph,
and the analysis reads the model's metadata (classes, input, feature density, uncertainty
threshold, adaptation). So the first run on a graph runtime, which loads the model file and
exports its graph to the user cache (models/runtime.py), also writes the model's description
beside it, keyed by the SHA-256 of the model file's bytes (`remember_model_file`). A later run on
that file finds both and runs torch-free. Anything missing or different (another file, another
pocovid or torch version, a runtime not installed, `auto` not yet measured or measured to be torch)
gives None: the caller loads the model file as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocovid import __version__
from pocovid.files import jsonable, write_json
from pocovid.models.preprocess import InputConfig

MODELS = "models"  # cache_dir() folder: one description per model file (its bytes' SHA-256)
KEEP_MODELS = 32  # descriptions kept (the newest; ~0.4 MB each with a feature density)
RECORD_VERSION = 1


@dataclass(eq=False)  # compared and hashed by identity: runtimes are kept per model object
class GraphModel:
    """What the frame pass and the analysis read of a model, without its weights: they are in the
    exported graph at `graph` (the runtimes build from it). Duck-types `FrameClassifier` there."""

    classes: list[str]
    findings: list[str]
    severity_levels: int
    backbone_name: str
    n_heads: int
    input_config: InputConfig
    meta: dict
    fingerprint: str  # `runtime.model_fingerprint` of the model it was exported from
    graph: Path

    def input_tensor(self, pixels: np.ndarray) -> np.ndarray:
        """Prepared uint8 pixels (B, S, S) -> the normalised input (B, 3, S, S), numpy."""
        return self.input_config.array(pixels)

    def eval(self) -> "GraphModel":
        return self


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _record_path(sha256: str) -> Path:
    from pocovid.models.runtime import cache_dir

    return cache_dir() / MODELS / f"{sha256[:32]}.json"


def remember_model_file(model) -> None:
    """Write `model`'s description for `cached_graph_model`, once, when the model was loaded from a
    file (`model.file_sha256`, set by `inference.load`). A cache that cannot be written is skipped:
    the next run loads the model file again."""
    sha = getattr(model, "file_sha256", None)
    if not sha:
        return
    path = _record_path(sha)
    if path.is_file():
        return
    from pocovid.models.runtime import model_fingerprint, torch_version

    meta = {k: v for k, v in (model.meta or {}).items() if k != "source"}
    record = {"record_version": RECORD_VERSION, "pocovid_version": __version__, "torch_version": torch_version(),
              "fingerprint": model_fingerprint(model), "classes": list(model.classes),
              "findings": list(model.findings or []), "severity_levels": int(model.severity_levels or 0),
              "backbone": model.backbone_name, "n_heads": int(model.n_heads),
              "input_config": model.input_config.to_dict(), "meta": jsonable(meta)}
    try:
        write_json(path, record)
        for old in sorted(path.parent.glob("*.json"), key=lambda q: q.stat().st_mtime, reverse=True)[KEEP_MODELS:]:
            old.unlink(missing_ok=True)
    except OSError:  # an unwritable cache (or a race with another process pruning it): no harm
        pass


def cached_graph_model(path: str | os.PathLike, runtime: str, spec: str | None = None) -> GraphModel | None:
    """The model file `path` as a `GraphModel` when an earlier run cached its graph for this very
    file, pocovid and torch, and `runtime` (onnx, openvino or openvino-bf16, or auto measured to be one
    of them) is installed; else None (load the file). `spec`: what the result names the model by."""
    from pocovid.models.runtime import base_runtime, cached_choice_of, graph_path_of, installed_version, torch_version

    runtime = base_runtime(runtime)
    if runtime not in ("auto", "onnx", "openvino"):
        return None
    try:
        record = json.loads(_record_path(file_sha256(path)).read_text(encoding="utf-8"))
        if record.get("record_version") != RECORD_VERSION or record.get("pocovid_version") != __version__ \
                or record.get("torch_version") != torch_version():
            return None
        graph = graph_path_of(record["fingerprint"])
        if not graph.is_file():
            return None
        model = GraphModel(classes=list(record["classes"]), findings=list(record["findings"]),
                           severity_levels=int(record["severity_levels"]), backbone_name=str(record["backbone"]),
                           n_heads=int(record["n_heads"]), input_config=InputConfig(**record["input_config"]),
                           meta=dict(record["meta"], source=str(spec if spec is not None else path)),
                           fingerprint=str(record["fingerprint"]), graph=graph)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no record, or not one we wrote
        return None
    if runtime == "auto":
        runtime = cached_choice_of(model.fingerprint)
        if runtime not in ("onnx", "openvino"):  # not measured yet, or torch was the fastest
            return None
    elif installed_version(runtime) is None:
        return None
    return model
