"""Frame classifiers: backbones as lists of stages, a frozen shared trunk with trained heads,
and the model file.

    from pocovid.models import create_model, list_models, save_model, load_model
    model = create_model("efficientnet_lite0", classes=["covid", "pneumonia", "regular"])
    x = model.preprocess(cropped_frames)            # (B, 3, H, W) float: what the model sees
    logits = model(x)                               # (B, n_classes), mean over heads
    out = model.infer(x)                            # FrameOutput: members' log-probs, pooled, CAMs

Backbones register with `@register_model` (a function per architecture returning a `Backbone`);
`list_models()` names them, `create_backbone(name)` builds one, `create_model(name, ...)` builds
a `FrameClassifier` on it. See `classifier.py` for the layout and module names (Grad-CAM target:
`heads.0.adapter.act2`), `model_file.py` for the file format.
"""

import importlib

#: name -> the module that defines it. Imported on first use (PEP 562): `import pocovid.models.runtime`
#: or a model run from its cached graph (`graph_model.py`) must not import PyTorch (~1 s).
_WHERE = {
    "DEFAULT_MODEL": "backbone", "Backbone": "backbone", "create_backbone": "backbone", "list_models": "backbone",
    "register_model": "backbone", "ModelError": "backbone",
    "Adapter": "classifier", "FrameClassifier": "classifier", "Head": "classifier", "OrdinalHead": "classifier",
    "create_model": "classifier", "FrameOutput": "outputs", "severity_level": "outputs", "compiled_trunk": "compiled",
    "FeatureDensity": "density", "fit_feature_density": "density",
    "InputConfig": "preprocess", "resolve_input_config": "preprocess", "to_grey": "preprocess",
    "FORMAT": "model_file", "FORMAT_VERSION": "model_file", "load_model": "model_file", "read_model_meta": "model_file",
    "save_model": "model_file", "model_summary": "summary",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'pocovid.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pocovid.models.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
