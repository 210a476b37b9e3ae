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

from pocovid.models.backbone import (DEFAULT_MODEL, Backbone, ModelError, create_backbone, list_models,
                                     register_model)
from pocovid.models import efficientnet_lite as _efficientnet_lite  # noqa: F401  (registers)
from pocovid.models import vgg as _vgg  # noqa: F401  (registers)
from pocovid.models.classifier import Adapter, FrameClassifier, FrameOutput, Head, OrdinalHead, create_model
from pocovid.models.compiled import compiled_trunk
from pocovid.models.density import FeatureDensity, fit_feature_density
from pocovid.models.preprocess import InputConfig, resolve_input_config, to_grey
from pocovid.models.model_file import FORMAT, FORMAT_VERSION, load_model, model_summary, read_model_meta, save_model

__all__ = [
    "DEFAULT_MODEL", "FORMAT", "FORMAT_VERSION", "Adapter", "Backbone", "FeatureDensity", "FrameClassifier",
    "FrameOutput", "Head", "InputConfig", "ModelError", "OrdinalHead", "compiled_trunk", "create_backbone",
    "create_model",
    "fit_feature_density", "list_models", "load_model", "model_summary", "read_model_meta", "register_model",
    "resolve_input_config", "save_model", "to_grey",
]
