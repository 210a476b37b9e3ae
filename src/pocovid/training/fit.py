"""Training one head on cached trunk features, with early stopping on held-out patients."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from sklearn.model_selection import StratifiedGroupKFold


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


def _batch(feats, copies: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    # memmap-friendly: one row at a time (fancy indexing across two axes reads the whole block)
    return torch.from_numpy(np.stack([feats[k, i] for k, i in zip(copies, idx)]).astype(np.float32))


def class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


@torch.no_grad()
def predict_head(head: nn.Module, feats, idx: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities of `head` on the clean cached features (copy 0) of frames `idx`."""
    head.eval()
    out = []
    for i in range(0, len(idx), batch_size):
        b = idx[i:i + batch_size]
        out.append(torch.softmax(head(_batch(feats, np.zeros(len(b), int), b)), 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def fit_head(head: nn.Module, feats, y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, *,
             epochs: int, patience: int, lr: float, weight_decay: float, batch_size: int,
             label_smoothing: float, seed: int, on_epoch=None) -> FitResult:
    """Train `head` (trunk features -> logits) on frames `train_idx`, each step drawing one of the
    cached augmented copies per frame; early-stop on the loss of frames `val_idx` (clean copies).
    Class imbalance: the loss weights classes by inverse frequency."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_classes = head(_batch(feats, np.zeros(1, int), train_idx[:1])).shape[1]
    w = class_weights(y[train_idx], n_classes)
    loss_fn = nn.CrossEntropyLoss(weight=w, label_smoothing=label_smoothing)
    val_fn = nn.CrossEntropyLoss(weight=w)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    n_copies = feats.shape[0]
    best, best_epoch, best_loss, bad, history = None, epochs, None, 0, []
    for epoch in range(1, epochs + 1):
        head.train()
        perm = rng.permutation(train_idx)
        total = 0.0
        for i in range(0, len(perm), batch_size):
            b = perm[i:i + batch_size]
            if len(b) < 2:  # batch norm needs two samples
                continue
            x = _batch(feats, rng.integers(0, n_copies, len(b)), b)
            loss = loss_fn(head(x), torch.from_numpy(y[b]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        sched.step()
        rec = {"epoch": epoch, "train_loss": total / max(len(perm), 1)}
        if len(val_idx):
            p = predict_head(head, feats, val_idx)
            vl = float(val_fn(torch.log(torch.from_numpy(p).clamp_min(1e-7)), torch.from_numpy(y[val_idx])))
            rec["val_loss"] = vl
            rec["val_balanced_accuracy"] = _balanced_accuracy(y[val_idx], p.argmax(1), n_classes)
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
    head.load_state_dict(best)
    return FitResult(best, best_epoch, best_loss, history)


def _balanced_accuracy(y, pred, n_classes) -> float:
    rec = [np.mean(pred[y == c] == c) for c in range(n_classes) if np.any(y == c)]
    return float(np.mean(rec)) if rec else float("nan")
