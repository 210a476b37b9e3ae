"""VGG-16 (the POCOVID-Net paper's backbone) in plain torch modules.

`VGG16Features.features` has the layout of torchvision's `vgg16().features` (31 layers: 13 conv
3x3 + ReLU, 5 max-pools), so its `state_dict` keys are `features.0.weight` ... `features.28.bias`
and a torchvision-format checkpoint (`vgg16-397923af.pth`) loads; its `classifier.*` keys are
ignored (pocovid puts its own head on the conv blocks). Stages = the 5 conv blocks, each ending
with its max-pool: channels 64, 128, 256, 512, 512 at strides 2, 4, 8, 16, 32.
ImageNet normalisation (mean/std on [0, 1] pixels), 224 px.
"""

from __future__ import annotations

import torch
from torch import nn

from pocovid.models.backbone import Backbone, ModelError, load_state_dict_file, register_model

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16Features(nn.Module):
    """torchvision's VGG-16 `features` (no batch norm), same indices, same initialisation."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def stages(self) -> list[nn.Sequential]:
        """The 5 conv blocks, each ending with its max-pool (modules shared with `features`)."""
        out, start = [], 0
        for i, m in enumerate(self.features):
            if isinstance(m, nn.MaxPool2d):
                out.append(self.features[start:i + 1])
                start = i + 1
        return out


def _load_weights(net: VGG16Features, weights: str | None) -> None:
    src = weights or VGG16_URL
    if weights and not weights.startswith(("http://", "https://")):
        sd = load_state_dict_file(weights, "vgg16")
    else:
        try:
            sd = torch.hub.load_state_dict_from_url(src, map_location="cpu", progress=False,
                                                    weights_only=True)
        except Exception as e:  # no network, HTTP error, corrupt download
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ModelError(
                f"vgg16: no pretrained weights: cannot download {src} ({reason}); pass a "
                f"torchvision-format VGG16 checkpoint path (weights= / --weights) or use --no-pretrained"
            ) from None
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    feats = {k: v for k, v in sd.items() if k.startswith("features.")}
    try:
        net.load_state_dict(feats, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{src}: not a torchvision VGG16 checkpoint "
                         f"({str(e).splitlines()[0][:200]})") from None


@register_model
def vgg16(pretrained: bool = True, weights: str | None = None) -> Backbone:
    """VGG-16 conv base. Weights: `weights` (local torchvision-format file or URL), else with
    pretrained=True the torchvision URL (torch hub cache first); pretrained=False: random init."""
    net = VGG16Features()
    if pretrained or weights:
        _load_weights(net, weights)
    return Backbone(name="vgg16", stages=nn.ModuleList(net.stages()),
                    stage_names=[f"block{i}" for i in range(1, 6)],
                    stage_channels=[64, 128, 256, 512, 512], stage_strides=[2, 4, 8, 16, 32],
                    input_size=224, normalization="imagenet", default_cut=5,
                    pretrained=bool(pretrained or weights))
