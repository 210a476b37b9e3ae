"""What one pass of the model gives: `FrameOutput`, torch tensors or numpy arrays alike.

Kept apart from the classifier so that what reads a frame pass (a graph runtime, the analysis)
needs no PyTorch: a model run on ONNX Runtime or OpenVINO from its cached graph never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np


def severity_level(probabilities) -> np.ndarray | int:
    """The severity level of level probabilities (S,) -> int, or (..., S) -> int array (...): the
    median level, the first level whose cumulative probability reaches 0.5 (each row normalised to
    sum 1 first; a row summing to 0 counts as uniform).

    Why the median and not the argmax: the severity head is ordinal, cumulative-logit (CORAL,
    `classifier.OrdinalHead`): P(y > k) = sigmoid(w.x + b_k). Its own decoding is the number of
    thresholds k with P(y > k) > 0.5, which is this median (P(y <= k) >= 0.5 <=> P(y > k) <= 0.5;
    a cumulative probability of exactly 0.5 gives the lower level). The argmax of a weak ordinal
    head skips the middle levels: with the thresholds a logit apart and a score that moves little,
    level 0 or the top level always holds the most probability (COVID-BLUES out of fold: argmax
    152 x 0 and 32 x 3 of 184 videos, never 1 or 2; quadratic kappa 0.019, the median's 0.128).
    The median also holds for a mean over frames and members (a mixture): it is the mixture's
    median level. Numpy only: the analysis and the graph runtimes import no torch."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] == 0:
        raise ValueError(f"severity probabilities must be (..., levels), got shape {p.shape}")
    s = p.sum(-1, keepdims=True)
    p = np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / p.shape[-1])
    level = np.argmax(np.cumsum(p, -1) >= 0.5 - 1e-9, -1)  # the last cumulative is 1: always found
    return int(level) if level.ndim == 0 else level.astype(int)


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
