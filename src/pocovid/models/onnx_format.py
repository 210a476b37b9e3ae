"""What an exported graph is, without PyTorch: its input and output names, its metadata format,
and how to read that metadata (models/export.py writes the graphs; the graph runtimes and a model
run from its cached graph read them, with no torch import).
"""

from __future__ import annotations

import json
import os

ONNX_FORMAT = "pocovid-onnx"
ONNX_FORMAT_VERSION = 1
OPSET = 17
INPUT = "input"
#: every output the graph may have, in order (see the module docstring)
OUTPUTS = ("log_probs", "probs", "pooled", "cams", "findings", "severity", "finding_cams")
INSTALL_HINT = "pip install 'pocovid[onnx]'"
INT8_INSTALL_HINT = "pip install 'pocovid[int8]'"
PRECISIONS = ("fp32", "int8")


def output_names(model) -> list[str]:
    """The outputs the exported graph of `model` has (a head the model lacks has none)."""
    skip = set()
    if not model.findings:
        skip |= {"findings", "finding_cams"}
    if not model.severity_levels:
        skip.add("severity")
    return [n for n in OUTPUTS if n not in skip]


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """The metadata of an exported graph, decoded (reads it with onnxruntime alone)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    props = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).get_modelmeta()
    out = {}
    for k, v in props.custom_metadata_map.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out
