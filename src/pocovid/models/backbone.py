"""Backbones as an ordered list of stages, and the registry of backbone builders.

A builder is a function `name(pretrained: bool = True, weights: str | None = None) -> Backbone`
decorated with `@register_model`; `create_backbone(name, ...)` calls it by name and
`list_models()` lists the names. `pocovid.models.create_model` builds a whole `FrameClassifier`.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pocovid.errors import ModelError  # noqa: F401  (re-exported: where it was defined before)
from pocovid.models.preprocess import NORMALIZATIONS



@dataclass
class Backbone:
    """A convolutional backbone cut into stages that run one after the other.

    stages:         ordered `nn.ModuleList`; stage i takes the output of stage i-1
    stage_names:    a name per stage ("stem", "stage1", ..., "head_conv" / "block1", ...)
    stage_channels: output channels of each stage
    stage_strides:  total stride (input pixels per output pixel) at each stage's output
    input_size:     the square input side the ImageNet weights were trained at
    normalization:  one of NORMALIZATIONS
    default_cut:    how many stages a classifier uses unless told otherwise
    classifier:     the ImageNet classifier applied to globally pooled output of the *last* stage
                    when the builder has it (pretrained EfficientNet-Lite): sanity checks only
    """

    name: str
    stages: nn.ModuleList
    stage_names: list[str]
    stage_channels: list[int]
    stage_strides: list[int]
    input_size: int
    normalization: str
    default_cut: int
    pretrained: bool = False
    classifier: nn.Module | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = len(self.stages)
        if not (len(self.stage_names) == len(self.stage_channels) == len(self.stage_strides) == n):
            raise ValueError(f"{self.name}: stage lists differ in length")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"{self.name}: unknown normalization {self.normalization!r}")
        if not 1 <= self.default_cut <= n:
            raise ValueError(f"{self.name}: default_cut {self.default_cut} outside 1..{n}")


_REGISTRY: dict[str, Callable[..., Backbone]] = {}
DEFAULT_MODEL = "efficientnet_lite0"


def register_model(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
    """Decorator: register a backbone builder under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def _register_builtin() -> None:
    """The backbones pocovid ships register on import (the package imports nothing eagerly)."""
    from pocovid.models import efficientnet_lite, vgg  # noqa: F401


def list_models() -> list[str]:
    """Registered backbone names, the default first."""
    _register_builtin()
    return sorted(_REGISTRY, key=lambda n: (n != DEFAULT_MODEL, n))


def is_model(name: str) -> bool:
    _register_builtin()
    return name in _REGISTRY


def create_backbone(name: str, pretrained: bool = True, weights: str | None = None) -> Backbone:
    """Build the registered backbone `name`; `weights` is a local checkpoint (or, for vgg16, a URL)."""
    _register_builtin()
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(list_models())})") from None
    return builder(pretrained=pretrained, weights=weights)


@contextlib.contextmanager
def quiet():
    """Silence prints from third-party weight loaders ("Loaded pretrained weights ...")."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def load_state_dict_file(path: str | Path, what: str) -> dict:
    """A state dict from a local checkpoint (plain tensors only); ModelError when unreadable."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: {what} weights file not found")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, pickled objects
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"{p}: cannot read {what} weights ({msg})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{p}: not a {what} state dict")
    return {k.removeprefix("module."): v for k, v in sd.items()}
