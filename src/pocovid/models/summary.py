"""What results and the service say about a model: `model_summary`, from its metadata alone
(a `FrameClassifier` or a `GraphModel` alike: no PyTorch needed)."""

from __future__ import annotations


def model_summary(model) -> dict:
    """What results and the service say about a model, from its file's metadata (plain JSON)."""
    from pocovid.models.density import FeatureDensity

    meta = getattr(model, "meta", None) or {}
    video = (meta.get("metrics") or {}).get("video") or {}
    return {"backbone": model.backbone_name, "classes": list(model.classes), "n_heads": int(model.n_heads),
            "input_size": int(model.input_config.size), "created": meta.get("created"),
            "pocovid_version": meta.get("pocovid_version"), "format_version": meta.get("format_version"),
            "data_fingerprint": meta.get("data_fingerprint"),
            "cv_video_balanced_accuracy": video.get("balanced_accuracy"),
            "has_feature_density": FeatureDensity.of(model) is not None}
