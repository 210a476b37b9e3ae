"""The frame classifier: a frozen backbone trunk shared by one or more trained heads.

    x (normalised B,3,H,W) -> trunk = stages[:n_frozen]          frozen: eval mode, no grads
                           -> for each head m (M = n_heads):
                                tail    = copy of stages[n_frozen:cut]   trainable (empty by default)
                                adapter = conv1x1 C->hidden, BN, ReLU, Dropout2d, conv3x3, BN, ReLU
                                pool (global average) -> dropout -> fc (n_classes)
                                                              -> findings (F logits, sigmoid)  [optional]
                                                              -> severity (ordinal, K levels)  [optional]

`forward(x)` returns the members' MEAN LOGITS (B, n_classes), so ordinary losses and MONAI's
GradCAM work unchanged; `forward_members(x)` returns every head's logits (B, M, n_classes) and
`predict_proba(x)` the mean of the heads' softmax probabilities (B, n_classes), which is what an
ensemble reports. Train an ensemble on each member's own loss, e.g.
`F.cross_entropy(model.forward_from_trunk_members(h).flatten(0, 1), y.repeat_interleave(M))`,
not on the mean logits (that couples the heads).

Stable module names (state-dict keys, hook targets):
    trunk.<i>                      stage i of the backbone (frozen)
    heads.<m>.tail.<j>             stage n_frozen + j, head m's own trainable copy
    heads.<m>.adapter.{conv1,bn1,act1,drop,conv2,bn2,act2}
    heads.<m>.fc                   the linear classifier (its weights give plain CAM)
    heads.<m>.findings             linear, one logit per finding (its weights give each finding's CAM)
    heads.<m>.severity.{fc,bias,gaps}  the ordinal severity head (`OrdinalHead`)

Multi-task heads (`findings`, `severity_levels`; off by default, so model files without them load
unchanged): every ensemble member reads the same pooled adapter features into the class fc, a
findings fc (independent yes/no per finding) and an ordinal severity head. Severity is a
cumulative-logit (CORAL) head: ONE weight vector w and K-1 ordered thresholds, P(severity > k) =
sigmoid(w.x + b_k) with b_0 > b_1 > ...: the levels are ordered by construction (a 4-way softmax
would have to learn that 2 lies between 1 and 3 from ~250 labels), it has C + K - 1 parameters
instead of K*C, and w gives one severity CAM.
Grad-CAM target: `heads.<m>.adapter.act2` (see `gradcam_target_layer`): the last map before pooling.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pocovid.data.labels import THREE_CLASSES
from pocovid.models.backbone import DEFAULT_MODEL, ModelError, create_backbone
from pocovid.models.outputs import FrameOutput
from pocovid.models.preprocess import InputConfig, resolve_input_config


#: Frames per model call in `infer`. On a small CPU a few frames at a time run ~2.5x faster than
#: 32: the activations stay in the caches (benchmarks/analyze_speed.py measures it).
INFER_CHUNK = 4


class Adapter(nn.Sequential):
    """Small trainable conv block between the backbone and the pooled linear head."""

    def __init__(self, in_channels: int, hidden: int = 128, spatial_dropout: float = 0.2) -> None:
        super().__init__(OrderedDict(
            conv1=nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False),
            bn1=nn.BatchNorm2d(hidden),
            act1=nn.ReLU(inplace=False),
            drop=nn.Dropout2d(spatial_dropout),
            conv2=nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, bias=False),
            bn2=nn.BatchNorm2d(hidden),
            act2=nn.ReLU(inplace=False),  # not in place: hooks (Grad-CAM) read this output
        ))


class OrdinalHead(nn.Module):
    """Cumulative-logit (CORAL) head for an ordinal target with `levels` levels: logits (B, levels-1)
    of P(y > k) = sigmoid(fc(x) + bias_k), one shared weight vector and thresholds kept in order
    (bias_k = bias - sum_{j<k} softplus(gaps_j)), so P(y > k) falls with k and every level's
    probability is >= 0."""

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        if levels < 2:
            raise ModelError(f"severity_levels must be >= 2 (or 0: no head), got {levels}")
        self.levels = int(levels)
        self.fc = nn.Linear(channels, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(1))
        self.gaps = nn.Parameter(torch.zeros(levels - 2))  # softplus(0) = 0.69 between thresholds

    def thresholds(self) -> torch.Tensor:
        return self.bias - torch.cat([self.bias.new_zeros(1), torch.cumsum(F.softplus(self.gaps), 0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.thresholds()

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """Cumulative logits (..., K-1) -> probability of each level (..., K)."""
        gt = torch.sigmoid(logits)  # P(y > k), non-increasing in k
        ones, zeros = torch.ones_like(gt[..., :1]), torch.zeros_like(gt[..., :1])
        return (torch.cat([ones, gt], -1) - torch.cat([gt, zeros], -1)).clamp_min(0)


class Head(nn.Module):
    """One ensemble member on top of the trunk: tail stages, adapter, pooling, dropout, fc (and
    optionally a findings fc and an ordinal severity head on the same pooled features)."""

    def __init__(self, tail: nn.Sequential, in_channels: int, n_classes: int,
                 adapter_channels: int | None, dropout: float, spatial_dropout: float,
                 n_findings: int = 0, severity_levels: int = 0) -> None:
        super().__init__()
        self.tail = tail
        if adapter_channels:
            self.adapter: nn.Module = Adapter(in_channels, adapter_channels, spatial_dropout)
            channels = adapter_channels
        else:
            self.adapter = nn.Identity()
            channels = in_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, n_classes)
        self.findings = nn.Linear(channels, n_findings) if n_findings else None
        self.severity = OrdinalHead(channels, severity_levels) if severity_levels else None
        self.out_channels = channels

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """The last map before pooling (B, C, h, w)."""
        return self.adapter(self.tail(h))

    def classify(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(f), 1)))

    def outputs(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(class logits (B, C), finding logits (B, F) or None, severity cumulative logits (B, S-1)
        or None) from the last map `f`: one pooled vector feeds every fc."""
        z = self.dropout(torch.flatten(self.pool(f), 1))
        return (self.fc(z), None if self.findings is None else self.findings(z),
                None if self.severity is None else self.severity(z))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(h))

    def forward_all(self, h: torch.Tensor):
        """`outputs` from trunk output: what multi-task training fits."""
        return self.outputs(self.features(h))


class FrameClassifier(nn.Module):
    """Frame classifier on a registered backbone (see the module docstring for the layout).

    backbone:         registered name (`pocovid.models.list_models()`)
    classes:          class names, in logit order
    cut:              number of backbone stages used (default: the backbone's `default_cut`;
                      efficientnet_lite*: 6 = stem + stages 1-5, 112 ch at stride 16; vgg16: 5)
    n_frozen:         stages in the frozen trunk (default `cut`: only adapter + fc train)
    adapter_channels: adapter width; None or 0: no adapter (pool the backbone map directly)
    dropout:          before fc; spatial_dropout: Dropout2d inside the adapter
    pretrained:       load the backbone's ImageNet weights (False: random init, e.g. when a model
                      file's state dict follows); weights: a local checkpoint (or URL for vgg16)
    n_heads:          ensemble members sharing the trunk (each with its own tail copy, adapter, fc)
    findings:         names of the yes/no findings each head also predicts (() : no findings head)
    severity_levels:  levels of the ordinal severity head (4: Soldati 0-3; 0: no severity head)
    """

    def __init__(self, backbone: str = DEFAULT_MODEL, classes: Sequence[str] = THREE_CLASSES,
                 cut: int | None = None, n_frozen: int | None = None,
                 adapter_channels: int | None = 128, dropout: float = 0.3,
                 spatial_dropout: float = 0.2, pretrained: bool = True,
                 weights: str | None = None, n_heads: int = 1, findings: Sequence[str] = (),
                 severity_levels: int = 0) -> None:
        super().__init__()
        classes = [str(c) for c in classes]
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ModelError(f"classes must be at least 2 distinct names, got {classes}")
        if n_heads < 1:
            raise ModelError(f"n_heads must be >= 1, got {n_heads}")
        findings = [str(f) for f in findings]
        if len(set(findings)) != len(findings):
            raise ModelError(f"findings must be distinct names, got {findings}")
        if severity_levels and severity_levels < 2 or severity_levels < 0:
            raise ModelError(f"severity_levels must be >= 2 (or 0: no head), got {severity_levels}")
        if adapter_channels is not None and adapter_channels < 0:
            raise ModelError(f"adapter_channels must be >= 0 or None, got {adapter_channels}")
        bb = create_backbone(backbone, pretrained=pretrained, weights=weights)
        n_stages = len(bb.stages)
        cut = bb.default_cut if cut is None else int(cut)
        if not 1 <= cut <= n_stages:
            raise ModelError(f"{backbone}: cut must be in 1..{n_stages} (stages {bb.stage_names}), got {cut}")
        n_frozen = cut if n_frozen is None else int(n_frozen)
        if not 0 <= n_frozen <= cut:
            raise ModelError(f"{backbone}: n_frozen must be in 0..cut={cut}, got {n_frozen}")

        self.backbone_name = backbone
        self.classes = classes
        self.cut = cut
        self.n_frozen = n_frozen
        self.adapter_channels = int(adapter_channels) if adapter_channels else None
        self.dropout = float(dropout)
        self.spatial_dropout = float(spatial_dropout)
        self.n_heads = int(n_heads)
        self.findings = findings
        self.severity_levels = int(severity_levels)
        self.input_size = bb.input_size
        self.normalization = bb.normalization
        self.stage_names = list(bb.stage_names[:cut])
        self.trunk_channels = bb.stage_channels[n_frozen - 1] if n_frozen else 3
        self.feature_stride = bb.stage_strides[cut - 1]

        self.trunk = nn.Sequential(*bb.stages[:n_frozen])
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        tail = nn.Sequential(*bb.stages[n_frozen:cut])
        self.heads = nn.ModuleList(
            Head(tail if m == 0 else copy.deepcopy(tail), bb.stage_channels[cut - 1], len(classes),
                 self.adapter_channels, self.dropout, self.spatial_dropout, len(findings), self.severity_levels)
            for m in range(self.n_heads))
        self.feature_channels = self.heads[0].out_channels
        self.meta: dict = {}  # filled by `load_model`: the model file's metadata
        self.training_config: dict = {}  # filled by `load_model`
        self.train()  # nn.Module's default mode; the trunk stays in eval mode

    # ---- configuration ------------------------------------------------------------------------
    def architecture(self) -> dict:
        """Constructor arguments that rebuild this architecture (without weights)."""
        return dict(backbone=self.backbone_name, classes=list(self.classes), cut=self.cut,
                    n_frozen=self.n_frozen, adapter_channels=self.adapter_channels,
                    dropout=self.dropout, spatial_dropout=self.spatial_dropout, n_heads=self.n_heads,
                    findings=list(self.findings), severity_levels=self.severity_levels)

    @property
    def preprocess_config(self) -> dict:
        return dict(input_size=self.input_size, normalization=self.normalization)

    def train(self, mode: bool = True) -> "FrameClassifier":
        """As nn.Module.train, but the trunk always stays in eval mode (BN statistics fixed)."""
        super().train(mode)
        self.trunk.eval()
        return self

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Adapter and fc parameters (class, findings, severity) of every head (not the tail stages)."""
        for h in self.heads:
            yield from h.adapter.parameters()
            yield from h.fc.parameters()
            for extra in (h.findings, h.severity):
                if extra is not None:
                    yield from extra.parameters()

    def tail_parameters(self) -> Iterator[nn.Parameter]:
        for h in self.heads:
            yield from h.tail.parameters()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything that trains: tails, adapters, fcs (the trunk has requires_grad False)."""
        return [p for p in self.parameters() if p.requires_grad]

    def n_parameters(self) -> dict:
        count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
        return dict(trunk=count(self.trunk.parameters()), tail=count(self.tail_parameters()),
                    head=count(self.head_parameters()), trainable=count(self.trainable_parameters()))

    # ---- input --------------------------------------------------------------------------------
    @property
    def input_config(self) -> InputConfig:
        """What this model sees (size, normalisation, grey, crop, sampling): see models/preprocess.py."""
        return resolve_input_config(self)

    def input_tensor(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Prepared uint8 pixels (B, S, S) (see `InputConfig.pixels`) -> the normalised input
        (B, 3, S, S) on the model's device."""
        return self.input_config.tensor(pixels, self.heads[0].fc.weight.device)

    def preprocess(self, frames) -> torch.Tensor:
        """Frames cropped to the scan region (RGB or grey uint8, any size) -> the model's input."""
        cfg = self.input_config
        return cfg.tensor(np.stack([cfg.pixels(f) for f in frames]), self.heads[0].fc.weight.device)

    # ---- forward ------------------------------------------------------------------------------
    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen trunk output for normalised input (B, 3, H, W): what training caches."""
        return self.trunk(x)

    def forward_from_trunk_members(self, h: torch.Tensor) -> torch.Tensor:
        """Every head's logits (B, M, n_classes) from trunk output."""
        return torch.stack([head(h) for head in self.heads], dim=1)

    def forward_from_trunk(self, h: torch.Tensor) -> torch.Tensor:
        """Mean logits over heads (B, n_classes) from trunk output."""
        if self.n_heads == 1:
            return self.heads[0](h)
        return self.forward_from_trunk_members(h).mean(dim=1)

    def forward_members(self, x: torch.Tensor) -> torch.Tensor:
        """Every head's logits (B, M, n_classes)."""
        return self.forward_from_trunk_members(self.forward_trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean logits over heads (B, n_classes)."""
        return self.forward_from_trunk(self.forward_trunk(x))

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the heads' softmax probabilities (B, n_classes)."""
        return F.softmax(self.forward_members(x), dim=-1).mean(dim=1)

    @torch.no_grad()
    def infer(self, x: torch.Tensor, cams: bool = True, trunk=None, chunk: int = INFER_CHUNK,
              finding_cams: bool = False) -> "FrameOutput":
        """Every output of one pass over normalised input (B, 3, H, W), in eval mode: see
        `FrameOutput`. `trunk`: a compiled trunk (`pocovid.models.compiled_trunk`) to use instead
        of the eager one; the batch runs `chunk` frames at a time. `finding_cams`: the findings
        head's activation maps too (its fc weights on the last map, as plain CAM)."""
        if chunk and len(x) > chunk:
            return FrameOutput.cat([self.infer(x[i:i + chunk], cams, trunk, 0, finding_cams)
                                    for i in range(0, len(x), chunk)])
        h = trunk(x.contiguous(memory_format=torch.channels_last)) if trunk is not None else self.forward_trunk(x)
        logits, find, sev, cam, fcam = [], [], [], None, None
        finding_cams = finding_cams and bool(self.findings)
        for head in self.heads:
            f = head.features(h)
            lg, fl, sl = head.outputs(f)
            logits.append(lg)
            if fl is not None:
                find.append(torch.sigmoid(fl.double()).float())
            if sl is not None:
                sev.append(OrdinalHead.probabilities(sl.double()).float())
            if cams:
                c = torch.einsum("bkhw,ck->bchw", f, head.fc.weight)
                cam = c if cam is None else cam + c
            if finding_cams:
                c = torch.einsum("bkhw,ck->bchw", f, head.findings.weight)
                fcam = c if fcam is None else fcam + c
        logits = torch.stack(logits, 1)
        return FrameOutput(log_probs=torch.log_softmax(logits.double(), -1).float(), pooled=h.float().mean((2, 3)),
                           cams=cam / len(self.heads) if cams else None,
                           findings=torch.stack(find, 1) if find else None,
                           severity=torch.stack(sev, 1) if sev else None,
                           finding_cams=fcam / len(self.heads) if finding_cams else None)

    # ---- explanations -------------------------------------------------------------------------
    def feature_map(self, x: torch.Tensor, head: int = 0) -> torch.Tensor:
        """Head `head`'s last map before pooling (B, C, h, w): what CAM weighs."""
        return self.heads[head].features(self.forward_trunk(x))

    def gradcam_target_layer(self, head: int = 0) -> str:
        """Module name for Grad-CAM (e.g. monai.visualize.GradCAM(model, target_layers=...)):
        the module whose output is head `head`'s last map before pooling."""
        if self.adapter_channels:
            return f"heads.{head}.adapter.act2"
        if len(self.heads[head].tail):
            return f"heads.{head}.tail.{len(self.heads[head].tail) - 1}"
        return f"trunk.{len(self.trunk) - 1}"  # frozen: needs an input that requires grad

    @torch.no_grad()
    def class_activation_map(self, x: torch.Tensor, class_index: int | Sequence[int] | torch.Tensor | None = None,
                             head: int | None = None) -> torch.Tensor:
        """Plain CAM (B, h, w) at the feature-map resolution: sum_k w[c, k] * A_k for class c
        (default: the predicted class of each frame), averaged over heads (or one `head`).
        Computed in eval mode; the caller upsamples / normalises."""
        was_training = self.training
        self.train(False)
        try:
            h = self.forward_trunk(x)
            members = range(self.n_heads) if head is None else [head]
            feats = [self.heads[m].features(h) for m in members]
            if class_index is None:
                logits = torch.stack([self.heads[m].classify(f) for m, f in zip(members, feats)], 1)
                cls = F.softmax(logits, -1).mean(1).argmax(-1)
            else:
                cls = torch.as_tensor(class_index, device=h.device).long().reshape(-1)
                cls = cls.expand(x.shape[0]) if cls.numel() == 1 else cls
            cams = [torch.einsum("bkhw,bk->bhw", f, self.heads[m].fc.weight[cls])
                    for m, f in zip(members, feats)]
            return torch.stack(cams, 0).mean(0)
        finally:
            self.train(was_training)


def create_model(name: str = DEFAULT_MODEL, classes: Sequence[str] = THREE_CLASSES, **kwargs) -> FrameClassifier:
    """A `FrameClassifier` on the registered backbone `name` (kwargs: see FrameClassifier)."""
    return FrameClassifier(backbone=name, classes=classes, **kwargs)
