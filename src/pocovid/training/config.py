"""Training configuration: plain data, saved with every run and model file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from pocovid.training.augment import AugmentConfig


@dataclass
class TrainConfig:
    backbone: str = "efficientnet_lite0"
    classes: tuple[str, ...] = ("covid", "pneumonia", "regular")
    probe: str | None = "convex"
    # frames: sampled per clip, cropped to the scan region, grey, resized to the backbone's size
    rate_hz: float | None = 3.0
    max_frames: int = 30
    crop: bool = True
    size: int | None = None  # None: the backbone's input size
    # backbone: stages [0, cut) used; [0, n_frozen) frozen and cached once per frame and augmentation
    cut: int | None = None  # None: the backbone's default
    n_frozen: int | None = None  # None: = cut (only the adapter and head train)
    adapter_channels: int | None = 128
    dropout: float = 0.3
    spatial_dropout: float = 0.2
    # optimisation
    n_heads: int = 5  # ensemble members sharing the frozen trunk (uncertainty from their disagreement)
    epochs: int = 30  # at most; early stopping on an inner validation split of patients
    patience: int = 6
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 32
    label_smoothing: float = 0.1
    val_fraction: float = 0.2  # share of training patients held out for early stopping
    refit: bool = True  # then retrain on all training patients for the epochs early stopping chose
    n_aug: int = 5  # cached augmented copies per frame (plus the clean one)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    aggregation: str = "mean"  # frame probabilities -> clip
    seed: int = 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        d["augment"]["gamma"] = list(self.augment.gamma)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        aug = d.pop("augment", None) or {}
        if "gamma" in aug:
            aug["gamma"] = tuple(aug["gamma"])
        known = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in known}, augment=AugmentConfig(**aug))
        cfg.classes = tuple(cfg.classes)
        return cfg

    def frames_key(self) -> dict:
        """What decides the frames extracted: runs that agree on it share the frame cache."""
        # the backbone decides the default input size
        return {k: getattr(self, k) for k in ("classes", "probe", "rate_hz", "max_frames", "crop", "size", "backbone")}

    def trunk_key(self) -> dict:
        """What decides the cached trunk features."""
        return self.frames_key() | {"cut": self.cut, "n_frozen": self.n_frozen,
                                    "n_aug": self.n_aug, "augment": self.to_dict()["augment"], "seed": self.seed}


def fingerprint(obj) -> str:
    """Short stable hash of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
