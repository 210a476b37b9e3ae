"""One diagnosis per exam (a patient's visit) from the outputs of all its recordings, and the LUS score.

    ids, p = exam_probabilities(clip_probs, exam_ids, "mean", classes=classes)
    params = fit_exam_combiner(clip_probs, exam_ids, exam_labels, classes)   # the "logistic" method
    ids, p = exam_probabilities(clip_probs, exam_ids, "logistic", classes=classes, params=params)
    ids, score = lus_score(severity_probs, exam_ids, zones)

Methods (`EXAM_METHODS`), each giving (n_exams, C) probabilities that sum to 1:
- `mean`: the mean of the clips' class probabilities.
- `max`: evidence of a disease is its strongest clip: each class other than `normal` scores its
  maximum over the clips, `normal` its minimum (every zone must look normal); normalised.
- `noisy_or`: each disease class 1 - prod(1 - p) over the clips (any clip may show it), `normal`
  prod(p) (all must); normalised.
- `logistic`: a multinomial logistic regression on per-class summaries of the clips (mean and max
  log-odds of each class, and the clip count's log) fitted on OUT-OF-FOLD clip outputs
  (`fit_exam_combiner`); its parameters are plain data, stored in the model file.
- `logistic_signs`: the same, reading also the signs the clips show: mean and max log-odds of each
  finding and the mean and max expected severity (a multi-task model's other heads). Clinicians
  diagnose an exam from its signs; on COVID-BLUES a patient's summed severity separates COVID-19
  better than the diagnosis head does (docs/model_card.md).

Both logistic methods choose their L2 strength by cross-validation over the exams they are fitted on
(`LogisticRegressionCV`, log loss), so nothing is tuned on the exams they are later scored on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

EXAM_METHODS = ("mean", "max", "noisy_or", "logistic", "logistic_signs")
#: methods that read the findings and severity heads too
SIGN_METHODS = ("logistic_signs",)
NORMAL_CLASS = "regular"
_EPS = 1e-6


def exam_method_of(model) -> tuple[str, dict | None, str]:
    """(method, params, where it came from): the exam combination the model file carries in
    `meta["extra"]["exam"]` (chosen when the model was trained), else "mean"."""
    ex = ((getattr(model, "meta", None) or {}).get("extra") or {}).get("exam") or {}
    method, params = ex.get("method"), ex.get("params")
    classes = list(model.classes)
    fitted = str(method).startswith("logistic")  # the logistic methods carry fitted parameters
    if method in EXAM_METHODS and not fitted:
        return method, None, f"model file ({ex.get('selected_by') or 'as trained'})"
    if method in EXAM_METHODS and params and list(params.get("classes", classes)) == classes:
        return method, params, f"model file ({ex.get('selected_by') or 'as trained'})"
    why = "names no exam method" if not method else f"has exam method {method!r} without usable parameters"
    return "mean", None, f"default: the model file {why}"


def _groups(exam_ids) -> tuple[np.ndarray, np.ndarray]:
    """(unique exam ids in first-seen order, index of each clip's exam)."""
    ids = np.asarray(exam_ids)
    uniq, first, inv = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty(len(order), int)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[inv.reshape(-1)]


def _normal_index(classes: Sequence[str] | None, n_classes: int) -> int | None:
    if classes is None:
        return None
    classes = list(classes)
    if len(classes) != n_classes:
        raise ValueError(f"{len(classes)} class names for {n_classes} probability columns")
    return classes.index(NORMAL_CLASS) if NORMAL_CLASS in classes else None


def _mean_max(values: np.ndarray, g: np.ndarray, n_exams: int) -> tuple[np.ndarray, np.ndarray]:
    """Per exam, the mean and the max of each column of `values` (n_clips, K) over its clips."""
    n = np.bincount(g, minlength=n_exams).astype(np.float64)
    mean = np.stack([np.bincount(g, values[:, c], n_exams) / n for c in range(values.shape[1])], 1)
    mx = np.full((n_exams, values.shape[1]), -np.inf)
    np.maximum.at(mx, g, values)
    return mean.reshape(n_exams, -1), mx


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def exam_features(clip_probs: np.ndarray, exam_ids, findings: np.ndarray | None = None,
                  severity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(exam ids, features per exam): mean and max log-odds of each class over the exam's clips and
    log(1 + clip count) (2C + 1: what `logistic` reads); with the clips' finding probabilities
    (n_clips, F) and severity level probabilities (n_clips, S), also the mean and max log-odds of each
    finding and the mean and max expected severity (what `logistic_signs` reads)."""
    ids, g = _groups(exam_ids)
    n = np.bincount(g, minlength=len(ids)).astype(np.float64)
    mean, mx = _mean_max(_logit(clip_probs), g, len(ids))
    cols = [mean, mx, np.log1p(n)[:, None]]
    if findings is not None and np.shape(findings)[-1]:
        cols += list(_mean_max(_logit(findings), g, len(ids)))
    if severity is not None and np.shape(severity)[-1]:
        cols += list(_mean_max(expected_severity(severity)[:, None], g, len(ids)))
    return ids, np.concatenate(cols, 1)


def _check_signs(method: str, findings, severity) -> None:
    if method in SIGN_METHODS and (findings is None or severity is None):
        raise ValueError(f"the {method} exam method needs the clips' findings and severity probabilities")


def exam_probabilities(clip_probs: np.ndarray, exam_ids, method: str = "mean", *,
                       classes: Sequence[str] | None = None, params: dict | None = None,
                       findings: np.ndarray | None = None, severity: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(exam ids in first-seen order, (n_exams, C) probabilities) from the clips' class
    probabilities (n_clips, C) and each clip's exam. `classes` names the columns (`max` and
    `noisy_or` need it to find the normal class 'regular'; without one every class is a disease);
    `params`: what `fit_exam_combiner` returned (methods `logistic*`); `findings` / `severity`: the
    clips' finding and severity probabilities (`logistic_signs` reads them)."""
    p = np.asarray(clip_probs, np.float64)
    if p.ndim != 2 or len(p) != len(np.asarray(exam_ids)):
        raise ValueError(f"clip_probs must be (n_clips, C) with one exam id per clip, got {p.shape}")
    if method not in EXAM_METHODS:
        raise ValueError(f"unknown exam method {method!r} (known: {', '.join(EXAM_METHODS)})")
    ids, g = _groups(exam_ids)
    n_ex, n_c = len(ids), p.shape[1]
    if method.startswith("logistic"):
        if not params:
            raise ValueError(f"the {method} exam method needs params (fit_exam_combiner)")
        _check_signs(method, findings, severity)
        _, x = exam_features(p, exam_ids, *((findings, severity) if method in SIGN_METHODS else ()))
        z = (x - np.asarray(params["mean"])) / np.asarray(params["scale"])
        z = z @ np.asarray(params["coef"]).T + np.asarray(params["intercept"])
        z = np.exp(z - z.max(1, keepdims=True))
        return ids, z / z.sum(1, keepdims=True)
    if method == "mean":
        out = np.stack([np.bincount(g, p[:, c], n_ex) for c in range(n_c)], 1)
        return ids, out / out.sum(1, keepdims=True)
    normal = _normal_index(classes, n_c)
    q = np.clip(p, _EPS, 1 - _EPS)
    out = np.empty((n_ex, n_c))
    for c in range(n_c):
        if method == "max":
            agg = np.full(n_ex, np.inf if c == normal else -np.inf)
            (np.minimum if c == normal else np.maximum).at(agg, g, q[:, c])
        elif c == normal:  # noisy-and: all clips normal
            agg = np.exp(np.bincount(g, np.log(q[:, c]), n_ex))
        else:  # noisy-or: any clip shows it
            agg = 1 - np.exp(np.bincount(g, np.log1p(-q[:, c]), n_ex))
        out[:, c] = agg
    return ids, out / out.sum(1, keepdims=True)


def fit_exam_combiner(clip_probs: np.ndarray, exam_ids, exam_labels: dict, classes: Sequence[str],
                      C: float | None = None, *, findings: np.ndarray | None = None,
                      severity: np.ndarray | None = None, finding_names: Sequence[str] = ()) -> dict:
    """Parameters of the `logistic` exam method (or `logistic_signs` when the clips' `findings` and
    `severity` probabilities are given): a multinomial logistic regression (L2, strength 1/C) from
    `exam_features` to the exam's label (`exam_labels`: exam -> class index; exams without a label
    are left out). C: chosen from CS by cross-validation over these exams (log loss) unless given.
    Fit it on OUT-OF-FOLD clip outputs, never on clips the model trained on. Plain data (lists): it
    goes into the model file."""
    from sklearn.linear_model import LogisticRegression

    signs = findings is not None and severity is not None
    ids, x = exam_features(clip_probs, exam_ids, *((findings, severity) if signs else ()))
    keep = np.array([e in exam_labels and exam_labels[e] is not None and exam_labels[e] >= 0 for e in ids])
    if not keep.any():
        raise ValueError("no exam with a label to fit the exam combination on")
    x, y = x[keep], np.array([exam_labels[e] for e in ids[keep]])
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    n_c = len(classes)
    coef, intercept = np.zeros((n_c, x.shape[1])), np.full(n_c, -8.0)  # a class absent from the fit: ~0.03%
    present = np.unique(y)
    if len(present) == 1:  # one class only: it gets everything
        intercept[present[0]] = 0.0
    else:
        z = (x - mean) / scale
        C = _choose_c(z, y) if C is None else C
        lr = LogisticRegression(C=C, max_iter=2000).fit(z, y)
        if len(present) == 2:  # sklearn gives one row for two classes
            coef[present[1]], intercept[present[1]] = lr.coef_[0], lr.intercept_[0]
            intercept[present[0]] = 0.0
        else:
            coef[present], intercept[present] = lr.coef_, lr.intercept_
    names = [f"mean_logit_{c}" for c in classes] + [f"max_logit_{c}" for c in classes] + ["log1p_n_clips"]
    if signs:
        fn = list(finding_names) or [f"finding{j}" for j in range(np.shape(findings)[-1])]
        names += ([f"mean_logit_{f}" for f in fn] + [f"max_logit_{f}" for f in fn]
                  + ["mean_expected_severity", "max_expected_severity"])
    return {"method": "logistic_signs" if signs else "logistic", "classes": list(classes), "mean": mean.tolist(),
            "scale": scale.tolist(), "coef": coef.tolist(), "intercept": intercept.tolist(),
            "C": None if C is None else float(C), "n_exams": int(keep.sum()), "features": names}


#: L2 strengths the logistic exam methods choose from
CS = (0.03, 0.1, 0.3, 1.0)


def _choose_c(z: np.ndarray, y: np.ndarray) -> float:
    """The C of CS with the lowest cross-validated log loss over these exams (stratified 3-fold;
    C = 1 when a class has fewer than 3 exams)."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    if np.bincount(y)[np.unique(y)].min() < 3:
        return 1.0
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        losses = [cross_val_score(LogisticRegression(C=c, max_iter=2000), z, y, cv=cv, scoring="neg_log_loss").mean()
                  for c in CS]
    return float(CS[int(np.argmax(losses))])


def expected_severity(severity_probs: np.ndarray) -> np.ndarray:
    """(n, S) level probabilities -> (n,) expected level sum_k k p_k."""
    p = np.asarray(severity_probs, np.float64)
    return p @ np.arange(p.shape[-1])


def lus_score(severity_probs: np.ndarray, exam_ids, zones: Sequence[str] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(exam ids, LUS score per exam): the sum over the exam's zones of each zone's expected
    severity (several recordings of one zone: their mean; an empty zone: each recording counts as a
    zone of its own). With 6 BLUE points and levels 0-3 the score runs 0-18."""
    ids, g = _groups(exam_ids)
    e = expected_severity(severity_probs)
    zones = [""] * len(e) if zones is None else [str(z) for z in zones]
    score = np.zeros(len(ids))
    per_zone: dict[tuple[int, str], list[float]] = {}
    for i, (gi, z) in enumerate(zip(g, zones)):
        per_zone.setdefault((int(gi), z or f"#clip{i}"), []).append(float(e[i]))
    for (gi, _), vals in per_zone.items():
        score[gi] += float(np.mean(vals))
    return ids, score


def exam_uncertainty(exam_probs: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each exam's probabilities: 0 = certain, ln C = uniform."""
    p = np.clip(np.asarray(exam_probs, np.float64), 1e-12, 1)
    return -(p * np.log(p)).sum(-1)
