"""Frames of a labelled set of recordings, ready for the model, and the frozen trunk's cached
outputs on them: the two things computed once per run and shared by every fold and head."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pocovid.errors import PocovidError
from pocovid.files import atomic_path
from pocovid.media import MediaError
from pocovid.models import InputConfig
from pocovid.models.preprocess import is_blank
from pocovid.region import load_clip
from pocovid.training.augment import AugmentConfig, augment_grey, ultrasound_augmentation


#: what `extract_frames` does, in the frame cache's key: 2 = blank frames left out
FRAMES_VERSION = 2


@dataclass
class FrameSet:
    """Frames of many clips: (N, S, S) grey uint8 with, per frame, its clip and time."""

    frames: np.ndarray
    clip_of: np.ndarray  # (N,) index into `clips`
    time_s: np.ndarray
    clips: list[dict]  # per clip: path, label, patient, fold, kind, probe, n_frames, region
    classes: list[str]
    failures: list[str] = field(default_factory=list)

    @property
    def y(self) -> np.ndarray:
        """Per-frame class index of the clip's label; -1 for a label outside `classes` (a recording
        kept for its findings and severity only)."""
        lab = np.array([self.classes.index(c["label"]) if c["label"] in self.classes else -1 for c in self.clips])
        return lab[self.clip_of]

    @property
    def patient(self) -> np.ndarray:
        return np.array([c["patient"] for c in self.clips])[self.clip_of]

    @property
    def fold(self) -> np.ndarray:
        return np.array([c.get("fold", -1) for c in self.clips])[self.clip_of]

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, frames=self.frames, clip_of=self.clip_of, time_s=self.time_s,
                     clips=json.dumps(self.clips), classes=json.dumps(self.classes),
                     failures=json.dumps(self.failures))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FrameSet":
        d = np.load(path, allow_pickle=False)
        return cls(d["frames"], d["clip_of"], d["time_s"], json.loads(str(d["clips"])),
                   json.loads(str(d["classes"])), json.loads(str(d["failures"])))


def extract_frames(clips: list[dict], root: str | os.PathLike | None, classes: list[str], input_config: InputConfig,
                   progress: bool = True) -> FrameSet:
    """The model's pixels (`InputConfig.pixels`: cropped to each clip's scan region, resized, grey)
    of the frames of `clips` (dicts with at least `path` and `label`), sampled as `input_config`
    says, but for blank frames (`is_blank`: left out, as the frame pass of `analyze` leaves them).
    Unreadable clips, and clips with no frame that shows anything, are left out and listed in
    `failures`."""
    cfg = input_config
    frames, clip_of, times, kept, failures = [], [], [], [], []
    for c in tqdm(clips, desc="frames", unit="clip", disable=not progress):
        path = Path(root) / c["path"] if root is not None else Path(c["path"])
        try:
            clip = load_clip(path, rate_hz=cfg.rate_hz, max_frames=cfg.max_frames, crop=cfg.crop)
        except (MediaError, ValueError) as e:
            failures.append(str(e) if str(path) in str(e) else f"{path}: {e}")
            continue
        pxs = [(cfg.pixels(f), t) for f, t in zip(clip.frames, clip.times)]
        shown = [(px, t) for px, t in pxs if not is_blank(px)]  # as the frame pass: blank frames are no evidence
        if not shown:
            failures.append(f"{path}: no sampled frame shows anything (all blank)")
            continue
        ci = len(kept)
        kept.append(dict(c, n_frames=len(shown), n_blank=len(pxs) - len(shown), region=clip.region.to_dict()))
        for px, t in shown:
            frames.append(px)
            clip_of.append(ci)
            times.append(t)
    if not frames:
        raise PocovidError("no frames could be extracted from any recording" +
                           (f" ({len(failures)} failed; first: {failures[0]})" if failures else ""))
    return FrameSet(np.stack(frames), np.array(clip_of), np.array(times, np.float32), kept, list(classes), failures)


@torch.no_grad()
def trunk_features(model, grey: np.ndarray, n_aug: int, aug_cfg: AugmentConfig | None = None, seed: int = 0,
                   batch_size: int = 64, progress: bool = True, out: str | os.PathLike | None = None) -> np.ndarray:
    """The frozen trunk's output for every frame, clean (copy 0) and `n_aug` augmented copies:
    (1 + n_aug, N, C, h, w) float16. With `out`, written to that .npy file (memory-mapped)."""
    model.eval()
    probe = model.forward_trunk(model.input_tensor(grey[:1]))
    shape = (1 + n_aug, len(grey), *probe.shape[1:])
    if out is None:
        return _fill_trunk_features(model, grey, np.empty(shape, np.float16), aug_cfg, seed, batch_size, progress)
    with atomic_path(out) as tmp:  # a cache file is whole or absent: a killed run leaves no half file
        feats = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        _fill_trunk_features(model, grey, feats, aug_cfg, seed, batch_size, progress)
        feats.flush()
        del feats
    return np.load(out, mmap_mode="r")


def _trunk_runner(model, batch_size: int):
    """(a function grey frames -> trunk maps as numpy, the batch size it runs best at). ONNX Runtime on the
    trunk's exported graph when installed: ~5x torch's frames/s (Lite0 to stage 5 on 2 cores: 120 against 24
    frames/s, batches of 16 against torch's 64), agreeing to ~2e-4, below the float16 the cache
    stores. Torch otherwise, or when the export fails."""
    def with_torch(g):
        return model.forward_trunk(model.input_tensor(g)).numpy()

    try:
        import onnxruntime as ort

        from pocovid.models.export import trunk_onnx_bytes

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3
        session = ort.InferenceSession(trunk_onnx_bytes(model), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - not installed, or no export of this trunk: torch computes the same maps
        return with_torch, batch_size

    def with_onnx(g):
        return session.run(None, {session.get_inputs()[0].name: model.input_tensor(g).numpy()})[0]

    return with_onnx, min(batch_size, 16)


def _fill_trunk_features(model, grey, feats, aug_cfg, seed, batch_size, progress) -> np.ndarray:
    n = len(grey)
    run, batch_size = _trunk_runner(model, batch_size)
    bar = tqdm(total=feats.shape[0] * n, desc="trunk features", unit="frame", disable=not progress)
    for k in range(feats.shape[0]):
        aug = ultrasound_augmentation(aug_cfg, size=grey.shape[1], seed=seed * 1000 + k) if k else None
        for i in range(0, n, batch_size):
            g = grey[i:i + batch_size]
            if aug is not None:
                g = augment_grey(g, aug)
            feats[k, i:i + len(g)] = run(g)
            bar.update(len(g))
    bar.close()
    return feats
