"""What one pass of the model gives: `FrameOutput`, torch tensors or numpy arrays alike.

Kept apart from the classifier so that what reads a frame pass (a graph runtime, the analysis)
needs no PyTorch: a model run on ONNX Runtime or OpenVINO from its cached graph never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np


def _is_tensor(v) -> bool:
    """A torch tensor, told without importing torch (numpy alone must not pull it in)."""
    return type(v).__module__.startswith("torch")


@dataclass
class FrameOutput:
    """What one pass of the model gives for a batch of B frames. A new head adds its field here
    and in `FrameClassifier.infer`; `cat`, `numpy` and the frame pass carry every field along.

    log_probs: (B, M, C) every ensemble member's class log-probabilities
    pooled:    (B, K) globally pooled trunk features (the out-of-distribution density)
    cams:      (B, C, h, w) class activation map of every class, mean over heads (None: not asked)
    findings:  (B, M, F) every member's probability of each finding (`model.findings`; None: no head)
    severity:  (B, M, S) every member's probability of each severity level 0..S-1 (None: no head)
    finding_cams: (B, F, h, w) activation map of every finding, mean over heads (None: not asked
               or no findings head)
    Each field is a torch.Tensor or an np.ndarray.
    """

    log_probs: Any
    pooled: Any
    cams: Any = None
    findings: Any = None
    severity: Any = None
    finding_cams: Any = None

    @classmethod
    def cat(cls, parts: Sequence["FrameOutput"]) -> "FrameOutput":
        """Parts along the frame axis (torch or numpy alike)."""
        def join(vs):
            if vs[0] is None:
                return None
            if _is_tensor(vs[0]):
                import torch

                return torch.cat(vs)
            return np.concatenate(vs)
        return cls(**{f.name: join([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def numpy(self) -> "FrameOutput":
        return FrameOutput(**{f.name: (v.detach().cpu().numpy() if _is_tensor(v) else v)
                              for f in fields(self) for v in [getattr(self, f.name)]})

    def select(self, sel) -> "FrameOutput":
        """The frames `sel` (a slice or index array) of every field."""
        return FrameOutput(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[sel])
                              for f in fields(self)})

    @property
    def probs(self):
        """(B, C) the ensemble's class probabilities: the mean of the members'."""
        return self.log_probs.exp().mean(1) if _is_tensor(self.log_probs) else np.exp(self.log_probs).mean(1)

    @property
    def member_probs(self):
        """(B, M, C) every member's class probabilities."""
        return self.log_probs.exp() if _is_tensor(self.log_probs) else np.exp(self.log_probs)
