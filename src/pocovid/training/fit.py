"""Training one head on cached trunk features, with early stopping on held-out patients.

The loss (`multitask_loss`) is the diagnosis cross-entropy (class-weighted, label smoothing) over
the frames that have a diagnosis target, plus `findings_weight` x the findings' binary
cross-entropy over the (frame, finding) pairs that are known, plus `severity_weight` x the ordinal
(cumulative-logit) loss over the frames whose severity is known. Each part is a mean over what is
known, so an unknown target adds nothing, not even a zero pulling the mean down.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.model_selection import StratifiedGroupKFold

from pocovid.models.runtime import M_MMAP_THRESHOLD, M_TOP_PAD, M_TRIM_THRESHOLD, set_malloc_options
from pocovid.training.supervision import FrameTargets


PRECISIONS = ("auto", "float32", "bfloat16")
# Frames per forward pass when predicting or validating. 32 fine-tuned stage-5 maps need ~17 MB a layer,
# under glibc's largest mmap threshold (32 MiB), so that memory is reused; 256 frames' layers were
# mapped and page-faulted afresh each time (2026-12-03: 22.9 against 8.7-10.9 ms a frame with
# `reuse_freed_memory`; the head-only model 1.1-1.4 ms either way).
EVAL_BATCH = 32


def reuse_freed_memory() -> None:
    """glibc only, once per process: keep freed blocks up to 32 MiB in the heap instead of handing
    them back to the system. Torch frees and reallocates every layer's activations each step; under
    glibc's dynamic thresholds the larger ones went back and came again as fresh zeroed pages (538 M
    page faults, 15 % of the CPU time as system time, in the 103-minute fine-tuning run of
    2026-12-03; per step of stage 5 + heads 15,000 faults, 44 after). Peak memory is what the heap
    reaches anyway; it is not returned while the process trains. Both thresholds are needed: the
    mmap one alone left the faults; the trim one alone put the mmap threshold back to 128 KiB (13x
    the faults)."""
    set_malloc_options({M_MMAP_THRESHOLD: 32 * 1024 * 1024,  # its maximum on 64-bit
                        M_TRIM_THRESHOLD: 1 << 30,
                        M_TOP_PAD: 64 * 1024 * 1024})  # grow the heap in steps of 64 MiB


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16), where oneDNN's
    bfloat16 convolutions are about twice float32's speed; elsewhere they are emulated and slower."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # private API: a torch without it counts as no
        return False


def training_dtype(precision: str, trains_backbone: bool = False) -> torch.dtype:
    """The dtype heads train in under `precision` (a `TrainConfig.precision`). "auto": bfloat16 where
    the CPU has it natively and only the heads train; float32 when backbone stages train too
    (`trains_backbone`), because oneDNN's bfloat16 depthwise convolutions train slower than its float32
    ones (2026-12-03, AMX Xeon, 32 frames a step: Lite0 stage 5 + heads 580 ms in bfloat16 against
    408 ms in float32; the heads alone 30 against 53 ms)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if precision == "auto":
        return torch.bfloat16 if native_bfloat16() and not trains_backbone else torch.float32
    return getattr(torch, precision)


@dataclass
class FitResult:
    state_dict: dict
    best_epoch: int
    best_val_loss: float | None
    history: list[dict] = field(default_factory=list)


def inner_split(patients: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int):
    """Indices (train, val) of clips: about `val_fraction` of the patients held out, stratified by
    label. Never touches the test fold: callers pass only the training clips."""
    n_splits = max(2, int(round(1 / max(val_fraction, 1e-6))))
    _, per_class = np.unique(labels, return_counts=True)
    # too few patients (or clips of every class) to hold some out: no early stopping
    if val_fraction <= 0 or len(set(patients)) < n_splits or np.all(per_class < n_splits):
        return np.arange(len(patients)), np.array([], int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only N members"
        sgk = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        tr, va = next(sgk.split(np.zeros(len(labels)), labels, patients))
    return tr, va


def _batch(feats, copies: np.ndarray, idx: np.ndarray, channels_last: bool = False) -> torch.Tensor:
    # memmap-friendly: one row at a time (fancy indexing across two axes reads the whole block)
    x = torch.from_numpy(np.stack([feats[k, i] for k, i in zip(copies, idx)]).astype(np.float32))
    # channels-last: oneDNN's convolutions skip a layout reorder each call (~10 % of a training step)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


@torch.no_grad()
def predict_head(head: nn.Module, feats, idx: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Class probabilities of `head` on the clean cached features (copy 0) of frames `idx`."""
    return predict_head_outputs(head, feats, idx, batch_size)[0]


@torch.no_grad()
def predict_head_outputs(head: nn.Module, feats, idx: np.ndarray, batch_size: int = EVAL_BATCH):
    """(class probabilities (n, C), finding probabilities (n, F) or None, severity level
    probabilities (n, S) or None) of `head` on the clean cached features of frames `idx`."""
    from pocovid.models import OrdinalHead

    head.eval()
    out: list[list] = [[], [], []]
    for i in range(0, len(idx), batch_size):
        b = idx[i:i + batch_size]
        lg, fl, sl = _outputs(head, _batch(feats, np.zeros(len(b), int), b))
        out[0].append(torch.softmax(lg, 1).numpy())
        if fl is not None:
            out[1].append(torch.sigmoid(fl).numpy())
        if sl is not None:
            out[2].append(OrdinalHead.probabilities(sl).numpy())
    if not out[0]:
        return np.zeros((0, 0)), None, None
    return tuple(np.concatenate(o) if o else None for o in out)


def _outputs(head: nn.Module, x: torch.Tensor):
    """(class logits, finding logits or None, severity logits or None), float32 (also when the head
    ran under bfloat16 autocast: the losses are computed in float32); a plain head gives logits only."""
    out = head.forward_all(x) if hasattr(head, "forward_all") else (head(x), None, None)
    return tuple(o if o is None else o.float() for o in out)


def as_targets(y) -> FrameTargets:
    """Per-frame targets: a `FrameTargets`, or class indices alone (diagnosis only)."""
    return y if isinstance(y, FrameTargets) else FrameTargets(np.asarray(y))


def task_sums(outputs, t: FrameTargets, idx: np.ndarray, class_w: torch.Tensor | None,
              label_smoothing: float = 0.0) -> dict[str, tuple[torch.Tensor, float]]:
    """Per task, (summed loss, count) over the known targets of frames `idx` (`outputs`: the head's
    on those frames). Tasks with nothing known are absent."""
    logits, fl, sl = outputs
    out = {}
    y = torch.from_numpy(t.y[idx]).long()
    known = y >= 0
    if known.any():
        w = class_w[y[known]] if class_w is not None else torch.ones(int(known.sum()))
        ce = F.cross_entropy(logits[known], y[known], weight=class_w, label_smoothing=label_smoothing,
                             reduction="none")
        out["diagnosis"] = (ce.sum(), float(w.sum()))  # as CrossEntropyLoss(weight=...) averages
    if fl is not None and t.findings is not None:
        f = torch.from_numpy(t.findings[idx]).float()
        m = ~torch.isnan(f)
        if m.any():
            bce = F.binary_cross_entropy_with_logits(fl[m], f[m], reduction="sum")
            out["findings"] = (bce, float(m.sum()))
    if sl is not None and t.severity is not None:
        s = torch.from_numpy(t.severity[idx]).float()
        m = ~torch.isnan(s)
        if m.any():
            levels = torch.arange(sl.shape[1], dtype=torch.float32)
            above = (s[m, None] > levels[None]).float()  # y > k for each threshold k
            ordl = F.binary_cross_entropy_with_logits(sl[m], above, reduction="none").mean(1).sum()
            out["severity"] = (ordl, float(m.sum()))
    return out


def multitask_loss(outputs, t: FrameTargets, idx: np.ndarray, class_w: torch.Tensor | None, *,
                   label_smoothing: float = 0.0, findings_weight: float = 1.0,
                   severity_weight: float = 1.0) -> torch.Tensor:
    """The training loss of frames `idx` (see the module docstring); 0 (no gradient) when nothing
    is known."""
    weights = {"diagnosis": 1.0, "findings": findings_weight, "severity": severity_weight}
    parts = task_sums(outputs, t, idx, class_w, label_smoothing)
    total = outputs[0].sum() * 0.0
    for task, (s, n) in parts.items():
        total = total + weights[task] * s / max(n, 1e-12)
    return total


def fit_head(head: nn.Module, feats, y, train_idx: np.ndarray, val_idx: np.ndarray, *,
             epochs: int, patience: int, lr: float, weight_decay: float, batch_size: int,
             label_smoothing: float, seed: int, on_epoch=None, findings_weight: float = 1.0,
             severity_weight: float = 1.0, dtype: torch.dtype = torch.float32) -> FitResult:
    """Train `head` (trunk features -> logits, and the findings / severity heads it has) on frames
    `train_idx`, each step drawing one of the cached augmented copies per frame; early-stop on the
    loss of frames `val_idx` (clean copies). `y`: per-frame class indices, or a `FrameTargets`
    (-1 / NaN: unknown, masked). Class imbalance: the diagnosis loss weights classes by inverse
    frequency among the frames with a diagnosis target. `dtype` bfloat16: forward passes (training
    and validation) under CPU autocast, mixed precision: the weights, their gradients, the optimizer
    and the loss stay float32, and so do predictions afterwards (`predict_head`)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t = as_targets(y)
    autocast = dict(device_type="cpu", dtype=dtype, enabled=dtype != torch.float32)
    head.eval()  # a probe for the class count: in train mode it would move batch-norm statistics
    with torch.no_grad(), torch.autocast(**autocast):
        n_classes = _outputs(head, _batch(feats, np.zeros(1, int), train_idx[:1]))[0].shape[1]
    yk = t.y[train_idx]
    w = class_weights(yk[yk >= 0], n_classes)
    kw = dict(findings_weight=findings_weight, severity_weight=severity_weight)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    n_copies = feats.shape[0]
    head.to(memory_format=torch.channels_last)  # as the batches (`_batch`)
    best, best_epoch, best_loss, bad, history = None, epochs, None, 0, []
    for epoch in range(1, epochs + 1):
        head.train()
        perm = rng.permutation(train_idx)
        total = 0.0
        for i in range(0, len(perm), batch_size):
            b = perm[i:i + batch_size]
            if len(b) < 2:  # batch norm needs two samples
                continue
            x = _batch(feats, rng.integers(0, n_copies, len(b)), b, channels_last=True)
            with torch.autocast(**autocast):
                out = _outputs(head, x)
            loss = multitask_loss(out, t, b, w, label_smoothing=label_smoothing, **kw)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        sched.step()
        rec = {"epoch": epoch, "train_loss": total / max(len(perm), 1)}
        if len(val_idx):
            with torch.autocast(**autocast):
                vl, p = _validation(head, feats, t, val_idx, w, kw)
            rec["val_loss"] = vl
            yv = t.y[val_idx]
            rec["val_balanced_accuracy"] = _balanced_accuracy(yv[yv >= 0], p[yv >= 0].argmax(1), n_classes)
            if best_loss is None or vl < best_loss - 1e-4:
                best, best_epoch, best_loss, bad = copy.deepcopy(head.state_dict()), epoch, vl, 0
            else:
                bad += 1
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
        if len(val_idx) and bad >= patience:
            break
    if best is None:
        best = copy.deepcopy(head.state_dict())
    head.to(memory_format=torch.contiguous_format)
    head.load_state_dict(best)
    return FitResult(best, best_epoch, best_loss, history)


@torch.no_grad()
def _validation(head, feats, t: FrameTargets, val_idx: np.ndarray, w, kw, batch_size: int = EVAL_BATCH):
    """(the multi-task loss of the validation frames, without label smoothing; their class probabilities)."""
    head.eval()
    sums: dict[str, list[float]] = {}
    probs = []
    for i in range(0, len(val_idx), batch_size):
        b = val_idx[i:i + batch_size]
        out = _outputs(head, _batch(feats, np.zeros(len(b), int), b, channels_last=True))
        probs.append(torch.softmax(out[0], 1).numpy())
        for task, (s, n) in task_sums(out, t, b, w).items():
            acc = sums.setdefault(task, [0.0, 0.0])
            acc[0] += float(s)
            acc[1] += n
    weights = {"diagnosis": 1.0, "findings": kw["findings_weight"], "severity": kw["severity_weight"]}
    loss = sum(weights[k] * s / max(n, 1e-12) for k, (s, n) in sums.items())
    return float(loss), np.concatenate(probs)


def _balanced_accuracy(y, pred, n_classes) -> float:
    rec = [np.mean(pred[y == c] == c) for c in range(n_classes) if np.any(y == c)]
    return float(np.mean(rec)) if rec else float("nan")
