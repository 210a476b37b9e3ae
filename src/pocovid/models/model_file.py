"""The pocovid model file: one `.pt` holding the architecture, metadata and weights.

Contents (a dict of plain data, readable with `torch.load(..., weights_only=True)`):
    format="pocovid-model", format_version, pocovid_version, created (ISO 8601 UTC),
    backbone, classes, cut, n_frozen, adapter_channels, n_heads, dropout, spatial_dropout,
    findings, severity_levels           (version 2: the multi-task heads; absent in version 1 = none)
    input_size, normalization,          (how frames must be prepared)
    training_config, data_fingerprint, metrics, extra,
    state_dict                          (the trunk once, then every head)

Files are written to a temporary file in the same folder and renamed over the target, so an
interrupted save never leaves a half-written file under the final name. Loading never runs
pickled code, never fetches pretrained weights (the state dict has them), and refuses anything
else with a one-line `ModelError`.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path, PurePath

import numpy as np
import torch

from pocovid import __version__
from pocovid.files import atomic_path
from pocovid.models.backbone import ModelError, is_model, list_models
from pocovid.models.preprocess import NORMALIZATIONS
from pocovid.models.classifier import FrameClassifier
from pocovid.models.summary import model_summary  # noqa: F401  (re-exported)

FORMAT = "pocovid-model"
FORMAT_VERSION = 2  # 2: findings / severity_levels (multi-task heads); version 1 files load as without them
_REQUIRED = {"backbone": str, "classes": list, "cut": int, "n_frozen": int, "n_heads": int,
             "input_size": int, "normalization": str, "state_dict": dict}


def _plain(obj, where: str):
    """`obj` as data that `torch.load(weights_only=True)` accepts (paths -> str, numpy -> python)."""
    if obj is None:
        return None
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass
        return _plain(obj.item(), where)
    for typ in (bool, int, float, str):  # exact built-in types (not numpy / enum subclasses)
        if isinstance(obj, typ):
            return typ(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: dict key {k!r} is not a str or int")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{where}: cannot store a {type(obj).__name__} in a model file (plain data only)")


def save_model(model: FrameClassifier, path: str | os.PathLike, *, training_config: dict,
               data_fingerprint: str, metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Write `model` with its metadata to `path` atomically; returns the path."""
    p = Path(path)
    arch = model.architecture()
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pocovid_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **arch,
        "input_size": int(model.input_size),
        "normalization": str(model.normalization),
        "training_config": _plain(training_config, "training_config"),
        "data_fingerprint": str(data_fingerprint),
        "metrics": _plain(metrics, "metrics"),
        "extra": _plain(extra, "extra"),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    with atomic_path(p, durable=True) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
    return p


def _read(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: not a file" if p.exists() else f"{p}: no such model file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ModelError(f"{p}: cannot read model file (corrupt, truncated or not a pocovid model: {reason})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ModelError(f"{p}: not a pocovid model file")
    version = obj.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelError(f"{p}: not a pocovid model file (bad format_version {version!r})")
    if version > FORMAT_VERSION:
        raise ModelError(f"{p}: model format version {version} is newer than this pocovid "
                         f"({__version__}) reads (up to {FORMAT_VERSION}); upgrade pocovid")
    for key, typ in _REQUIRED.items():
        if not isinstance(obj.get(key), typ) or isinstance(obj.get(key), bool):
            raise ModelError(f"{p}: damaged pocovid model file (field {key!r} missing or not a {typ.__name__})")
    findings, levels = obj.get("findings", []), obj.get("severity_levels", 0)
    if not isinstance(findings, list) or not all(isinstance(f, str) for f in findings):
        raise ModelError(f"{p}: damaged pocovid model file (field 'findings' is not a list of names)")
    if not isinstance(levels, int) or isinstance(levels, bool):
        raise ModelError(f"{p}: damaged pocovid model file (field 'severity_levels' is not an int)")
    if obj["normalization"] not in NORMALIZATIONS:
        raise ModelError(f"{p}: damaged pocovid model file (unknown normalization {obj['normalization']!r})")
    return obj


def read_model_meta(path: str | os.PathLike) -> dict:
    """Everything in the model file but the weights (checked like `load_model` checks it)."""
    obj = _read(path)
    return {k: v for k, v in obj.items() if k != "state_dict"}


def load_model(path: str | os.PathLike) -> FrameClassifier:
    """The FrameClassifier saved in `path`, in eval mode; the file's metadata (all but the
    weights) in `.meta`, its training_config also in `.training_config`."""
    p = Path(path)
    obj = _read(p)
    backbone = obj["backbone"]
    if not is_model(backbone):
        raise ModelError(f"{p}: unknown backbone {backbone!r} (this pocovid knows {', '.join(list_models())})")
    try:
        model = FrameClassifier(
            backbone=backbone, classes=obj["classes"], cut=obj["cut"], n_frozen=obj["n_frozen"],
            adapter_channels=obj.get("adapter_channels"), dropout=float(obj.get("dropout", 0.0)),
            spatial_dropout=float(obj.get("spatial_dropout", 0.0)), n_heads=obj["n_heads"],
            findings=obj.get("findings", []), severity_levels=obj.get("severity_levels", 0), pretrained=False)
    except ModelError as e:
        raise ModelError(f"{p}: {e}") from None
    sd = obj["state_dict"]
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and (not isinstance(sd[k], torch.Tensor) or sd[k].shape != own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{len(ks)} {what} (e.g. {ks[0]})" for what, ks in
                 (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong)) if ks]
        raise ModelError(f"{p}: weights do not match the {backbone} architecture: {'; '.join(parts)}")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{p}: weights do not match the {backbone} architecture "
                         f"({str(e).splitlines()[0][:160]})") from None
    model.input_size = obj["input_size"]
    model.normalization = obj["normalization"]
    model.meta = {k: v for k, v in obj.items() if k != "state_dict"}
    model.training_config = model.meta.get("training_config") or {}
    return model.eval()
