"""What the model sees: the one place that turns a frame of a recording into the model's input.

    cfg = resolve_input_config(model)        # from what the model file records (as timm's
                                              # resolve_data_config reads a model's own config)
    px = cfg.pixels(region.crop(frame))      # (S, S) uint8: resized, grey      (cacheable)
    x = cfg.tensor(np.stack(pxs))            # (B, 3, S, S) float, normalised   (the model's input)

Two stages because training caches the uint8 pixels once per frame, and a recording's frames are
turned into pixels in the decode thread while the model runs on earlier ones. Everything else
(training, evaluate, analyze, the service) calls these; nothing restates them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pocovid.media.reader import rgb_to_grey
from pocovid.region import resize_frame

#: (scale, mean, std) of each normalisation a backbone may ask for: x = (pixels / scale - mean) / std.
#:   "tf":       x / 127.5 - 1 (EfficientNet-Lite, TensorFlow-trained)
#:   "imagenet": (x / 255 - mean) / std with torchvision's ImageNet statistics (VGG-16)
NORMALIZATIONS: dict[str, tuple[float, tuple[float, ...], tuple[float, ...]]] = {
    "tf": (127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
    "imagenet": (255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


#: the grey-level standard deviation below which a frame's model pixels show nothing (the
#: out-of-distribution guard's blank cue uses the same level; real frames: >= 17 in the scan region)
BLANK_STD = 4.0


def is_blank(pixels: np.ndarray) -> bool:
    """Whether prepared pixels (`InputConfig.pixels`) show nothing: no evidence for any class. Why it
    matters: all six videos of three COVID-BLUES patients (two with COVID-19) open on a black frame
    (their encoder's), and the bundled model reads a black frame as healthy (0.77). Measured on every
    4th pixel of every 4th row: ~3,000 pixels say it as well as 50,000."""
    return float(pixels[::4, ::4].std()) < BLANK_STD


def to_grey(image: np.ndarray) -> np.ndarray:
    """RGB -> grey: scanner colour tints say which site a clip is from, not what the lung shows. The
    reader's own conversion, so that the grey frames a reader gives (`frames(grey=True)`, what the
    frame pass asks for) are these, or for a video the same but for a grey level here and there."""
    return rgb_to_grey(image)


@dataclass(frozen=True)
class InputConfig:
    """How frames are sampled from a recording and prepared for the model.

    size:          square input side
    normalization: a key of NORMALIZATIONS
    grey:          frames are turned grey (and repeated to 3 channels)
    crop:          frames are cropped to the recording's scan region first
    rate_hz, max_frames: how training sampled a recording (evaluate samples the same way;
                   analyze looks at every frame unless told otherwise)
    """

    size: int = 224
    normalization: str = "tf"
    grey: bool = True
    crop: bool = True
    rate_hz: float | None = 3.0
    max_frames: int | None = 30

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r} (known: {', '.join(NORMALIZATIONS)})")
        if int(self.size) < 8:
            raise ValueError(f"input size must be >= 8, got {self.size}")

    def pixels(self, image: np.ndarray) -> np.ndarray:
        """A frame (already cropped to the scan region), RGB or grey uint8 of any size ->
        (S, S) grey uint8 (or (S, S, 3) when `grey` is False)."""
        # grey before resizing: a third of the resize work; the same pixels but for +-1 grey level on
        # ~0.2 % of them (measured on real clips)
        return resize_frame(to_grey(image) if self.grey else image, self.size)

    def array(self, pixels: np.ndarray) -> np.ndarray:
        """`tensor` in numpy, for a model run from its exported graph without PyTorch: the same
        float32 arithmetic, (B, 3, S, S) C-contiguous. Computed in place in the one output array:
        a batch's input is ~19 MB, and each temporary of that size is a fresh mapping whose pages
        fault in (large blocks are mapped: see runtime._map_large_blocks), 3x the arithmetic."""
        x = _batch_of_pixels(np.asarray(pixels), np.uint8)
        scale, mean, std = NORMALIZATIONS[self.normalization]
        out = np.empty((x.shape[0], 3, *x.shape[1:3]), np.float32)
        for c in range(3):
            o = out[:, c]
            if x.ndim == 3 and c and (mean[c], std[c]) == (mean[0], std[0]):
                o[...] = out[:, 0]  # grey: the same values as the first channel
                continue
            np.divide(x if x.ndim == 3 else x[..., c], np.float32(scale), out=o, dtype=np.float32)
            np.subtract(o, np.float32(mean[c]), out=o)
            np.divide(o, np.float32(std[c]), out=o)
        return out

    def tensor(self, pixels, device=None):
        """(B, S, S) grey or (B, S, S, 3) RGB uint8 pixels ((S, S): one grey frame) ->
        normalised float (B, 3, S, S) on `device` (a torch.Tensor)."""
        import torch  # not at import: a model run from its graph (`array`) needs no PyTorch

        x = torch.from_numpy(np.ascontiguousarray(pixels)) if isinstance(pixels, np.ndarray) else pixels
        x = _batch_of_pixels(x, torch.uint8)
        scale, mean, std = NORMALIZATIONS[self.normalization]
        # grey (B, S, S): scaled once and broadcast to the 3 channels by the per-channel step (the same
        # arithmetic on every element as on three copies, a third of the work)
        x = x.to(device)[:, None].float() / scale if x.ndim == 3 else x.to(device).permute(0, 3, 1, 2).float() / scale
        m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
        return ((x - m) / s).contiguous()

    def to_dict(self) -> dict:
        return asdict(self)


def _batch_of_pixels(x, uint8):
    """`x` (numpy or torch) checked to be uint8 pixels (B, H, W) grey or (B, H, W, 3) RGB; one grey
    frame (H, W) becomes a batch of one."""
    if x.dtype != uint8:
        raise ValueError(f"model input must be uint8 pixels, got {x.dtype}")
    if x.ndim == 2:
        x = x[None]
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] != 3):
        raise ValueError(f"model input must be (B, H, W) grey or (B, H, W, 3) RGB pixels, got {tuple(x.shape)}")
    return x


def resolve_input_config(model) -> InputConfig:
    """The input a model expects, from what its file records: the backbone's size and
    normalisation, and the sampling and size its training used (`training_config`)."""
    tc = getattr(model, "training_config", None) or {}
    return InputConfig(size=int(tc.get("size") or model.input_size), normalization=model.normalization,
                       grey=bool(tc.get("grey", True)), crop=bool(tc.get("crop", True)),
                       rate_hz=tc.get("rate_hz", 3.0), max_frames=tc.get("max_frames", 30))
