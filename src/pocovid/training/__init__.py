"""Training: frames and cached trunk features once per run, small heads per fold, the final model."""

from pocovid.training.augment import AugmentConfig, ultrasound_augmentation
from pocovid.training.config import TrainConfig
from pocovid.training.cv import RunResult, train_run
from pocovid.training.frames import FrameSet, extract_frames, trunk_features

__all__ = ["AugmentConfig", "FrameSet", "RunResult", "TrainConfig", "extract_frames", "train_run",
           "trunk_features", "ultrasound_augmentation"]
