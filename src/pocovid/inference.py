"""Running a trained model on recordings: the one path shared by `evaluate` and `analyze`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pocovid.errors import PocovidError

DEFAULT_MODEL_FILE = Path(__file__).parent / "assets" / "default_model.pt"


def model_path(spec: str | os.PathLike) -> Path:
    """'default' -> the model shipped inside the package; anything else is a path."""
    if str(spec) == "default":
        if not DEFAULT_MODEL_FILE.is_file():
            raise PocovidError(f"{DEFAULT_MODEL_FILE}: the bundled model is missing from this installation")
        return DEFAULT_MODEL_FILE
    p = Path(spec)
    if not p.exists():
        raise PocovidError(f"{p}: no such model file")
    return p


def load(spec: str | os.PathLike = "default"):
    """A trained `FrameClassifier` from 'default' or a model file, in eval mode."""
    from pocovid.models import load_model

    m = load_model(model_path(spec))
    m.eval()
    return m


@torch.no_grad()
def frame_probabilities(model, grey: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, S, S) grey uint8 frames at the model's input size -> (N, M, C) probabilities of each
    ensemble member M."""
    from pocovid.training.frames import grey_to_input

    model.eval()
    out = []
    for i in range(0, len(grey), batch_size):
        x = model.normalize(grey_to_input(grey[i:i + batch_size]))
        out.append(torch.softmax(model.forward_members(x), dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, getattr(model, "n_heads", 1), len(model.classes)))


def sampling_of(model) -> dict:
    """How the model's training sampled and prepared frames (used again at prediction time)."""
    cfg = getattr(model, "training_config", None) or {}  # set by load_model from the model file
    return {"rate_hz": cfg.get("rate_hz", 3.0), "max_frames": cfg.get("max_frames", 30),
            "crop": cfg.get("crop", True), "size": cfg.get("size") or model.input_size}


@dataclass
class RecordingPrediction:
    path: str
    times: np.ndarray  # (N,) seconds
    members: np.ndarray  # (N, M, C)
    region: dict

    @property
    def frame_probs(self) -> np.ndarray:
        return self.members.mean(1)


def predict_recording(model, path: str | os.PathLike, rate_hz: float | None = None, max_frames: int | None = None,
                      crop: bool = True) -> RecordingPrediction:
    """Frames of one recording (scan region cropped, grey, resized) and each member's probabilities."""
    from pocovid.region import load_clip
    from pocovid.training.frames import to_grey

    clip = load_clip(path, rate_hz=rate_hz, max_frames=max_frames, size=model.input_size, crop=crop)
    grey = np.stack([to_grey(f) for f in clip.frames])
    return RecordingPrediction(str(path), np.array(clip.times), frame_probabilities(model, grey),
                               clip.region.to_dict())
