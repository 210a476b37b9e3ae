"""Site adaptation: a clinic recalibrates a trained model on a few dozen labelled exams of its own.

    outs = local_outputs(model, load_index(local_root))        # the model on every recording, once
    adapted = adapt_model(model, outs, "calibrate")            # a copy, adaptation in its metadata
    result = adapt("default", [local_root], "adapted.pt")      # all of it + the new model file

The model runs once on each local recording (`predict_recording`, frames sampled as its training
sampled them); every method then fits on those cached outputs:

- `temperature`: one temperature T on the clip logits z = log(mean frame probability);
- `prior`: one bias per class on z (the local prevalence: a class-prior shift);
- `calibrate` (default): both, jointly;
- `heads`: the class fc of every ensemble head refitted on the local frames' pooled adapter
  features, with a strong L2 pull toward the original weights (the rest of the model is unchanged).

The calibration is applied to clip probabilities, softmax(z / T + b), by
`pocovid.models.adaptation.adapt_clip_probs` (analyze, evaluate); `heads` changes the weights.
Every fit minimises the negative log-likelihood of the labels at the level they hold: per clip for
recording labels, per exam (the mean of its clips' probabilities) when a label is the patient's
(COVID-BLUES: many of a COVID-19 patient's zones look normal, the clip is not COVID-19 by itself).
Priors on the parameters (penalty 0.5 * reg * |theta - theta0|^2, theta0: no change) keep a fit on
two patients, or on one class only, finite. Recordings whose label is not one of the model's classes
are not fitted on (they are kept in `LocalOutputs` for evaluation, e.g. COVID-19 vs not).
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pocovid.errors import PocovidError
from pocovid.models.adaptation import ADAPTATION_KEY, calibrate_probs

ADAPT_METHODS = ("calibrate", "temperature", "prior", "heads")
LEVELS = ("auto", "clip", "exam")
#: strength of the pull toward "no change": calibration (log T and each bias) / heads (fc weights)
DEFAULT_REG = {"calibrate": 1.0, "temperature": 1.0, "prior": 1.0, "heads": 30.0}
HEADS_ITERATIONS = 60


@dataclass
class LocalOutputs:
    """The model's raw outputs on a site's recordings: one entry per recording that could be read.

    frame_probs[i]: (N_i, C) ensemble frame probabilities; features[i]: (N_i, M, K) every head's pooled
    adapter features (only when asked: the `heads` method)."""

    classes: list[str]
    items: list = field(default_factory=list)
    frame_probs: list[np.ndarray] = field(default_factory=list)
    features: list[np.ndarray] | None = None
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def clip_probs(self) -> np.ndarray:
        """(n, C) raw clip probabilities: the mean of the frames'."""
        return np.stack([p.mean(0) for p in self.frame_probs]) if self.items else np.zeros((0, len(self.classes)))

    def exams(self) -> np.ndarray:
        return np.array([it.exam or it.patient for it in self.items], dtype=object)

    def patients(self) -> np.ndarray:
        return np.array([it.patient for it in self.items], dtype=object)

    def subset(self, keep) -> "LocalOutputs":
        """The recordings at the positions (or boolean mask) `keep`."""
        keep = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, int)
        return LocalOutputs(self.classes, [self.items[i] for i in keep], [self.frame_probs[i] for i in keep],
                            None if self.features is None else [self.features[i] for i in keep], list(self.skipped))


def local_outputs(model, index, *, features: bool = False, progress: bool = False) -> LocalOutputs:
    """The model once on every recording of `index` (a `DatasetIndex`): frame probabilities (and, with
    `features`, each head's pooled adapter features). Unreadable recordings go to `skipped`."""
    from tqdm.auto import tqdm

    from pocovid.inference import predict_recording

    out = LocalOutputs(list(model.classes), features=[] if features else None,
                       skipped=[f"{p}: {why}" for p, why in index.failures])
    captured: list[list[torch.Tensor]] = [[] for _ in model.heads]
    hooks = [head.pool.register_forward_hook(lambda _m, _i, o, k=k: captured[k].append(o.flatten(1).detach()))
             for k, head in enumerate(model.heads)] if features else []
    try:
        for it in tqdm(index.items, desc="local recordings", unit="clip", disable=not progress):
            for c in captured:
                c.clear()
            try:
                rec = predict_recording(model, index.abspath(it))
            except PocovidError as e:
                out.skipped.append(str(e))
                continue
            out.items.append(it)
            out.frame_probs.append(np.asarray(rec.probs, np.float64))
            if features:
                out.features.append(torch.stack([torch.cat(c) for c in captured], 1).numpy())
    finally:
        for h in hooks:
            h.remove()
    return out


# ------------------------------------------------------------------------------------------- fitting

def _targets(outs: LocalOutputs, level: str) -> tuple[str, np.ndarray, torch.Tensor, torch.Tensor]:
    """(level, recordings fitted on, group of each of them, label of each group): groups are the
    recordings themselves (clip level) or their exams (exam level); only labels among the classes."""
    from pocovid.data.index import exam_label

    if level not in LEVELS:
        raise PocovidError(f"unknown adaptation level {level!r} (known: {', '.join(LEVELS)})")
    fit = np.array([it.label in outs.classes for it in outs.items], bool)
    if level == "auto":
        level = "exam" if any(it.label_scope == "patient" for it, f in zip(outs.items, fit) if f) else "clip"
    idx = np.flatnonzero(fit)
    if level == "clip":
        labels = [outs.classes.index(outs.items[i].label) for i in idx]
        return level, idx, torch.arange(len(idx)), torch.tensor(labels)
    exams: dict[str, list[int]] = {}
    for i in idx:
        exams.setdefault(outs.items[i].exam or outs.items[i].patient, []).append(int(i))
    keep, group, labels = [], [], []
    for members in exams.values():
        lab = exam_label([outs.items[i] for i in members])
        if lab in outs.classes:
            keep += members
            group += [len(labels)] * len(members)
            labels.append(outs.classes.index(lab))
    return level, np.array(keep, int), torch.tensor(group, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def _group_nll(clip_p: torch.Tensor, group: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed NLL of each group's label under the mean of its clips' probabilities."""
    n = len(labels)
    s = torch.zeros(n, clip_p.shape[1], dtype=clip_p.dtype).index_add(0, group, clip_p)
    cnt = torch.zeros(n, dtype=clip_p.dtype).index_add(0, group, torch.ones_like(group, dtype=clip_p.dtype))
    p = s / cnt[:, None]
    return -torch.log(p[torch.arange(n), labels].clamp_min(1e-12)).sum()


def _minimise(params: list[torch.Tensor], loss_fn, iterations: int = 100) -> None:
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)


def fit_calibration(clip_logits: np.ndarray, group, labels, method: str = "calibrate",
                    reg: float | None = None) -> tuple[float, np.ndarray]:
    """(temperature, bias (C,)) minimising the NLL of `labels` (one per group) under the mean over each
    group's clips of softmax(clip_logits / T + b) + 0.5 * reg * (log(T)^2 + |b|^2). `group`: each
    clip's group (0..G-1; clip level: arange). `method`: temperature (b = 0), prior (T = 1), calibrate."""
    if method not in ("calibrate", "temperature", "prior"):
        raise PocovidError(f"unknown calibration method {method!r}")
    reg = DEFAULT_REG[method] if reg is None else float(reg)
    z = torch.as_tensor(np.asarray(clip_logits, np.float64))
    group, labels = torch.as_tensor(group, dtype=torch.long), torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=method != "prior")
    bias = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=method != "temperature")
    if len(labels):
        def loss():
            p = torch.softmax(z / log_t.exp() + bias, -1)
            return _group_nll(p, group, labels) + 0.5 * reg * (log_t.pow(2).sum() + bias.pow(2).sum())
        _minimise([t for t in (log_t, bias) if t.requires_grad], loss)
    b = bias.detach().numpy()
    return float(log_t.detach().exp()), b - b.mean()  # softmax does not see a common shift


def _fit_heads(model, outs: LocalOutputs, rows: np.ndarray, group, labels, reg: float) -> None:
    """Refit every head's class fc (in place) on the local frames' pooled features: the NLL of the
    labels under the clips' mean ensemble probabilities + 0.5 * reg * |W - W0|^2 (and the bias)."""
    feats = [torch.as_tensor(outs.features[i], dtype=torch.float32) for i in rows]  # (N_i, M, K)
    x = torch.cat(feats)
    clip_of = torch.cat([torch.full((len(f),), j, dtype=torch.long) for j, f in enumerate(feats)])
    n_frames = torch.bincount(clip_of, minlength=len(feats)).to(torch.float32)
    fcs = [h.fc for h in model.heads]
    w0 = [(fc.weight.detach().clone(), fc.bias.detach().clone()) for fc in fcs]
    params = [p for fc in fcs for p in (fc.weight, fc.bias)]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)

    def loss():
        frame_p = torch.stack([torch.softmax(fc(x[:, m]), -1) for m, fc in enumerate(fcs)], 1).mean(1)
        clip_p = torch.zeros(len(feats), frame_p.shape[1]).index_add(0, clip_of, frame_p) / n_frames[:, None]
        pull = sum(((fc.weight - w).pow(2).sum() + (fc.bias - b).pow(2).sum()) for fc, (w, b) in zip(fcs, w0))
        return _group_nll(clip_p, group, labels) + 0.5 * reg * pull

    if len(labels):
        _minimise(params, loss, HEADS_ITERATIONS)
    for p, flag in zip(params, flags):
        p.grad = None
        p.requires_grad_(flag)


def _nll(clip_p: np.ndarray, group, labels) -> float | None:
    if not len(labels):
        return None
    return round(float(_group_nll(torch.as_tensor(clip_p, dtype=torch.float64), torch.as_tensor(group),
                                  torch.as_tensor(labels))) / len(labels), 5)


def adapt_model(model, outs: LocalOutputs, method: str = "calibrate", *, level: str = "auto",
                reg: float | None = None):
    """A copy of `model` adapted to the recordings of `outs` (`method`: `ADAPT_METHODS`), with its
    parameters in `meta["extra"]["adaptation"]`. A previous adaptation is replaced (the fit reads
    the raw outputs); `heads` needs `outs` computed with `features=True`."""
    if method not in ADAPT_METHODS:
        raise PocovidError(f"unknown adaptation method {method!r} (known: {', '.join(ADAPT_METHODS)})")
    if method == "heads" and outs.features is None:
        raise PocovidError("the heads method needs the local outputs with features (local_outputs(features=True))")
    level, rows, group, labels = _targets(outs, level)
    if not len(labels):
        raise PocovidError(f"no local recording with a label among the model's classes ({', '.join(outs.classes)})"
                           " to adapt on")
    reg = DEFAULT_REG[method] if reg is None else float(reg)
    clip_p = outs.clip_probs()[rows]
    new = copy.deepcopy(model).eval()
    temperature, bias = 1.0, np.zeros(len(outs.classes))
    if method == "heads":
        _fit_heads(new, outs, rows, group, labels, reg)
        after = _heads_clip_probs(new, outs, rows)
    else:
        temperature, bias = fit_calibration(np.log(np.clip(clip_p, 1e-12, None)), group, labels, method, reg)
        after = calibrate_probs(clip_p, temperature, bias)
    counts = np.bincount(labels.numpy(), minlength=len(outs.classes))
    extra = dict((new.meta or {}).get("extra") or {})
    extra[ADAPTATION_KEY] = {
        "method": method, "temperature": round(float(temperature), 6), "bias": [round(float(b), 6) for b in bias],
        "classes": list(outs.classes), "level": level, "reg": reg,
        "n_recordings": int(len(rows)), "n_groups": int(len(labels)),
        "n_patients": len({outs.items[i].patient for i in rows}),
        "label_counts": {c: int(n) for c, n in zip(outs.classes, counts)},
        "datasets": sorted({outs.items[i].dataset for i in rows if outs.items[i].dataset}),
        "nll_before": _nll(clip_p, group, labels), "nll_after": _nll(after, group, labels),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "applied_to": "clip probabilities: softmax(log(mean frame probability) / temperature + bias)",
    }
    new.meta = dict(new.meta or {}, extra=extra)
    return new


def _heads_clip_probs(model, outs: LocalOutputs, rows) -> np.ndarray:
    """Clip probabilities from the cached pooled features through the model's (refitted) class fcs."""
    with torch.no_grad():
        return np.stack([torch.stack([torch.softmax(h.fc(torch.as_tensor(outs.features[i][:, m])), -1)
                                      for m, h in enumerate(model.heads)], 1).mean((0, 1)).double().numpy()
                         for i in rows])


def adapted_clip_probs(model, outs: LocalOutputs) -> np.ndarray:
    """(n, C) clip probabilities of the recordings of `outs` as an adapted `model` gives them: from the
    cached outputs (its fc weights on cached features when they are there), then its calibration."""
    from pocovid.models.adaptation import adapt_clip_probs

    raw = _heads_clip_probs(model, outs, range(len(outs))) if outs.features is not None else outs.clip_probs()
    return adapt_clip_probs(model, raw)


# ------------------------------------------------------------------------------------- the command

@dataclass
class AdaptResult:
    model_path: Path
    adaptation: dict
    n_recordings: int
    skipped: list[str]


def adapt(model_spec: str | os.PathLike, roots, out: str | os.PathLike, *, method: str = "calibrate",
          level: str = "auto", reg: float | None = None, progress: bool = False) -> AdaptResult:
    """Load `model_spec` ('default' or a model file), run it on the labelled recordings under `roots`
    (any layout `pocovid data index` reads; several are combined), fit `method` and write the adapted
    model to `out` (never over the input model file). Raises a one-line `PocovidError`."""
    from pocovid.data import load_index
    from pocovid.inference import load, model_path
    from pocovid.models import save_model

    if method not in ADAPT_METHODS:
        raise PocovidError(f"unknown adaptation method {method!r} (known: {', '.join(ADAPT_METHODS)})")
    if level not in LEVELS:
        raise PocovidError(f"unknown adaptation level {level!r} (known: {', '.join(LEVELS)})")
    src, dst = model_path(model_spec), Path(out)
    if dst.exists() and (dst.is_dir() or dst.resolve() == src.resolve()):
        raise PocovidError(f"{dst}: is the input model file" if not dst.is_dir() else f"{dst}: is a folder")
    model = load(model_spec)
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    index = load_index(roots[0] if len(roots) == 1 else roots)
    outs = local_outputs(model, index, features=method == "heads", progress=progress)
    if not len(outs):
        raise PocovidError(f"{', '.join(map(str, roots))}: none of the {len(index.items)} recordings could be read")
    adapted = adapt_model(model, outs, method, level=level, reg=reg)
    meta = adapted.meta
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_model(adapted, dst, training_config=adapted.training_config or {},
               data_fingerprint=str(meta.get("data_fingerprint") or ""), metrics=meta.get("metrics"),
               extra=meta["extra"])
    return AdaptResult(dst, meta["extra"][ADAPTATION_KEY], len(outs), outs.skipped)
