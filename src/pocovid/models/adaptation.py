"""Site adaptation, applied: a clinic's recalibration of a model's clip probabilities.

    p_clip = adapt_clip_probs(model, frame_probs.mean(0))   # identity for a model without one

`pocovid adapt` (`pocovid.training.adapt`) fits, on a site's own labelled recordings, one
temperature T and one bias per class b (the local class prevalence) on the clip logits z = log of
the mean frame probability, and stores them in the model file as `meta["extra"]["adaptation"]` =
{"method", "temperature", "bias", "classes", ...}. The calibrated clip probabilities are

    softmax(z / T + b)

This is THE place the adaptation is applied, when frame probabilities have been aggregated into a
clip's (analyze's prediction, evaluate's clip rows, video metrics and exams). `FrameOutput` and the
per-frame probabilities stay the model's raw outputs (frame tables, key moments, uncertainty and
CAMs are unchanged). A model without an adaptation (or with T = 1, b = 0) gives its clip
probabilities back unchanged. The `heads` method refits the class fc weights instead (they are in the
file's weights) and stores T = 1, b = 0 here.
"""

from __future__ import annotations

import math

import numpy as np

from pocovid.errors import ModelError

ADAPTATION_KEY = "adaptation"


def adaptation_of(model) -> dict | None:
    """The model file's site adaptation (`meta["extra"]["adaptation"]`), checked; None without one."""
    extra = (getattr(model, "meta", None) or {}).get("extra") or {}
    a = extra.get(ADAPTATION_KEY) if isinstance(extra, dict) else None
    if a is None:
        return None
    classes = list(getattr(model, "classes", []))
    t, b = a.get("temperature", 1.0) if isinstance(a, dict) else None, a.get("bias") if isinstance(a, dict) else None
    ok = (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0
          and isinstance(b, list) and len(b) == len(classes)
          and all(isinstance(v, (int, float)) and math.isfinite(v) for v in b)
          and a.get("classes", classes) == classes)
    if not ok:
        raise ModelError(f"{(getattr(model, 'meta', None) or {}).get('source', 'model')}: damaged site adaptation "
                         f"in the model file (needs a temperature > 0 and one bias per class of {classes})")
    return a


def calibrate_probs(probs: np.ndarray, temperature: float = 1.0, bias=None) -> np.ndarray:
    """softmax(log(probs) / temperature + bias) over the last axis; probs (..., C)."""
    p = np.asarray(probs, np.float64)
    if temperature == 1.0 and (bias is None or not np.any(bias)):
        return p
    z = np.log(np.clip(p, 1e-12, None)) / float(temperature)
    if bias is not None:
        z = z + np.asarray(bias, np.float64)
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def adapt_clip_probs(model, clip_probs: np.ndarray) -> np.ndarray:
    """The clip probabilities (..., C) with the model's site adaptation applied (unchanged without one)."""
    a = adaptation_of(model)
    if a is None:
        return clip_probs
    return calibrate_probs(clip_probs, float(a.get("temperature", 1.0)), a["bias"])
