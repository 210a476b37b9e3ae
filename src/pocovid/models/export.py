"""The whole per-frame network as an ONNX model: trunk and every head, with the metadata to use it.

    data = onnx_bytes(model)                            # fp32 graph (+ metadata when `onnx` is installed)
    export_onnx(model, "model.onnx")                    # the file `pocovid export` writes
    export_onnx(model, "model-int8.onnx", calibration=batches)   # int8: static post-training quantisation
    meta = read_onnx_metadata("model.onnx")             # onnxruntime alone

Input  `input`: float32 (B, 3, S, S), the normalised frames `FrameClassifier.infer` takes (the
       preprocessing is in the metadata: `preprocessing`). B is dynamic.
Outputs, as `FrameOutput` names them (findings, severity, finding_cams only when the model has a
findings / severity head): log_probs (B, M, C), probs (B, C) (the ensemble: mean of the members'
probabilities), pooled (B, K), cams (B, C, h, w), findings (B, M, F), severity (B, M, L),
finding_cams (B, F, h, w). The graph is `FrameClassifier.infer` itself, traced: nothing is restated.

Metadata (ONNX metadata_props, JSON text): format, format_version, pocovid_version, precision (fp32 /
int8), calibration (int8: what the ranges came from), classes, findings, severity_levels,
preprocessing (the model's `InputConfig` and the normalisation's scale / mean / std), outputs
(name -> shape and meaning), architecture, model_fingerprint (`runtime.model_fingerprint`: a hash of
the architecture, input and weights; `analyze --graph` runs a file only for the model it names),
model_meta (the model file's metadata but the weights: training config, metrics, extra = feature
density, uncertainty threshold, exam method, adaptation).

int8: NNCF's post-training quantisation (`nncf.quantize` on the ONNX graph, QDQ): the trunk's and
the heads' convolutions and the trunk's residual additions, weights int8 per output channel,
activations per tensor (NNCF's `performance` preset for the CPU target: symmetric, the layout
OpenVINO's int8 kernels run fastest; `mixed` was as accurate and 1.5x slower), and NNCF's full bias
correction, which re-fits each quantised layer's bias so that its mean output on the calibration
frames equals fp32's. The heads' linear layers, CAM products, pooling and softmax stay float
(`INT8_FLOAT_OPS`). Bias correction is what makes it hold: without it (and with
onnxruntime's `quantize_static`, used until 2026-12-02) the quantisation error shifted the class
probabilities one way (real frames: COVID-19 -0.08 on average) and lost COVID clips on held-out
folds. What it costs is measured in benchmarks/precision_cv.py and documented in docs/export.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pocovid import __version__
from pocovid.files import atomic_path, jsonable
from pocovid.models.backbone import ModelError
from pocovid.models.onnx_format import (INPUT, INSTALL_HINT, INT8_INSTALL_HINT, ONNX_FORMAT,  # noqa: F401
                                        ONNX_FORMAT_VERSION, OPSET, OUTPUTS, PRECISIONS, output_names,
                                        read_onnx_metadata)
from pocovid.models.preprocess import NORMALIZATIONS



class _Graph(nn.Module):
    """`model.infer` on one batch, every output, as a module the exporter traces."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.names = output_names(model)

    def forward(self, x: torch.Tensor):
        o = self.model.infer(x, cams=True, chunk=0, finding_cams=bool(self.model.findings))
        values = {f.name: getattr(o, f.name) for f in fields(o)} | {"probs": o.log_probs.exp().mean(1)}
        return tuple(values[n] for n in self.names)


def onnx_metadata(model, precision: str = "fp32", calibration: str | None = None) -> dict[str, str]:
    """The metadata_props of `model`'s ONNX graph: every value is JSON text."""
    from pocovid.models.runtime import model_fingerprint  # runtime.py imports this module

    cfg = model.input_config
    scale, mean, std = NORMALIZATIONS[cfg.normalization]
    meta = {k: v for k, v in (getattr(model, "meta", None) or {}).items() if k != "state_dict"}
    n_f, n_s = len(model.findings), int(model.severity_levels)
    shapes = {"log_probs": "(B, M, C) every ensemble member's class log-probabilities",
              "probs": "(B, C) the ensemble's class probabilities (mean of the members')",
              "pooled": "(B, K) globally pooled trunk features (the out-of-distribution density)",
              "cams": "(B, C, h, w) class activation map of every class, mean over members",
              "findings": f"(B, M, {n_f}) every member's probability of each finding",
              "severity": f"(B, M, {n_s}) every member's probability of each severity level",
              "finding_cams": f"(B, {n_f}, h, w) activation map of every finding, mean over members"}
    values = {
        "format": ONNX_FORMAT, "format_version": ONNX_FORMAT_VERSION, "pocovid_version": __version__,
        "precision": precision, "calibration": calibration,
        "classes": list(model.classes), "findings": list(model.findings), "severity_levels": n_s,
        "n_members": int(model.n_heads),
        "preprocessing": dict(cfg.to_dict(), scale=scale, mean=list(mean), std=list(std), input=INPUT,
                              layout="NCHW float32",
                              formula="crop the frame to the scan region, resize to size x size, when grey: "
                                      "grey repeated to 3 channels (else RGB); x = (pixels / scale - mean) / std "
                                      "per channel"),
        "outputs": {n: shapes.get(n, "") for n in output_names(model)},
        "architecture": model.architecture(),
        "model_fingerprint": model_fingerprint(model),
        "model_meta": meta,
    }
    return {k: json.dumps(jsonable(v)) for k, v in values.items()}


def _onnx_export(module: nn.Module, model, outputs: list[str], what: str) -> bytes:
    """`module` (a part or view of `model`) as an fp32 ONNX graph of the normalised input, batch dynamic."""
    was = model.training
    model.eval()
    size = model.input_config.size
    buf = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            example = torch.zeros(2, 3, size, size, device=next(model.parameters()).device)
            torch.onnx.export(module, (example,), buf, dynamo=False, input_names=[INPUT], output_names=outputs,
                              opset_version=OPSET, dynamic_axes={n: {0: "batch"} for n in [INPUT, *outputs]})
    except Exception as e:
        raise ModelError(f"cannot export {what} to ONNX ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    finally:
        model.train(was)
    return buf.getvalue()


def onnx_bytes(model, metadata: bool = True) -> bytes:
    """`model`'s fp32 ONNX graph (dynamic batch), with its metadata when the `onnx` package is
    installed (`metadata`); what the ONNX runtimes run in memory. Raises ModelError when export fails."""
    data = _onnx_export(_Graph(model), model, output_names(model), "the model")
    if not metadata:
        return data
    try:
        import onnx
    except ImportError:
        return data
    proto = onnx.load_from_string(data)
    _set_metadata(proto, onnx_metadata(model))
    return proto.SerializeToString()


def trunk_onnx_bytes(model) -> bytes:
    """The fp32 ONNX graph (dynamic batch) of `model`'s frozen trunk alone: normalised input (B, 3, H, W)
    -> what `forward_trunk` gives, the maps training caches. Raises ModelError when export fails."""
    return _onnx_export(model.trunk, model, ["trunk"], "the trunk")


def _set_metadata(proto, values: dict[str, str]) -> None:
    import onnx

    proto.producer_name, proto.producer_version = "pocovid", __version__
    keep = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.helper.set_model_props(proto, dict({p.key: p.value for p in keep}, **values))


#: ops of the heads kept float in int8 (the linear layers, the CAM products, pooling, the ensemble
#: mean): they are a sliver of the compute, and quantised they shifted the class probabilities
INT8_FLOAT_OPS = ["Gemm", "MatMul", "Einsum", "ReduceMean", "GlobalAveragePool", "Flatten", "Softmax"]


def quantize_int8(model, calibration: Iterable[np.ndarray]):
    """Static post-training int8 quantisation of an fp32 graph `model` (an `onnx.ModelProto`) over the
    `calibration` batches (B, 3, S, S) float32 (see the module docstring); the int8 ModelProto."""
    try:
        import nncf
    except ImportError as e:
        raise ModelError(f"int8 export needs NNCF ({e}; {INT8_INSTALL_HINT})") from None
    frames = [np.ascontiguousarray(f, np.float32) for x in calibration for f in x]
    if not frames:
        raise ModelError("int8 export: no calibration frames")
    # the trunk's residual additions are quantised; the heads' additions (the severity head's
    # thresholds among them) stay float, as the heads' linear layers do
    heads_adds = [n.name for n in model.graph.node if n.op_type == "Add" and not n.name.startswith("/trunk/")]
    ignored = nncf.IgnoredScope(names=heads_adds, types=INT8_FLOAT_OPS, validate=False)
    log = logging.getLogger("nncf")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        # NNCF prints progress bars (rich) on stdout / stderr: an export's own output is one line
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = nncf.quantize(model, nncf.Dataset(frames, lambda f: {INPUT: f[None]}), subset_size=len(frames),
                              preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU,
                              fast_bias_correction=False, ignored_scope=ignored)
    finally:
        log.setLevel(level)
    return q


def export_onnx(model, path: str | os.PathLike, *, calibration: Iterable[np.ndarray] | None = None,
                calibration_text: str | None = None) -> Path:
    """Write `model`'s ONNX graph with its metadata to `path` (atomically). With `calibration`
    (normalised float32 batches, e.g. real frames of the site's recordings) the graph is quantised
    to int8 (see the module docstring); `calibration_text` says in the metadata what those were."""
    try:
        import onnx
    except ImportError as e:
        raise ModelError(f"ONNX export needs the onnx package ({e}; {INSTALL_HINT})") from None
    proto = onnx.load_from_string(onnx_bytes(model, metadata=False))
    precision = "fp32"
    if calibration is not None:
        proto, precision = quantize_int8(proto, calibration), "int8"
    _set_metadata(proto, onnx_metadata(model, precision, calibration_text))
    with atomic_path(path, durable=True) as tmp:
        onnx.save_model(proto, str(tmp))
    return Path(path)


