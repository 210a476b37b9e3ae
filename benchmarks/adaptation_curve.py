"""How many local patients site adaptation (`pocovid adapt`) needs: the curve on held-out local patients.

    python benchmarks/adaptation_curve.py runs/mt_lodo ../shared/data/covid-blues --fold 1   # a run's fold model
    python benchmarks/adaptation_curve.py model.pt LOCAL_ROOT [--method calibrate] [--repeats 5]

RUN_OR_MODEL: a model file, 'default', or a run folder (RUN/fold<K>.pt with --fold K, else RUN/model.pt).
For leave-one-dataset-out, take the model that never saw the local dataset (e.g. the LODO fold whose
test set is COVID-BLUES: trained on POCUS only).

The model runs once on every local recording (outputs cached in memory). In each repeat the local
patients are split at random into a test third (stratified COVID-19 vs not) and an adaptation pool;
for k in --ks (0, 2, 4, ... patients drawn from the pool; `all`: the whole pool) the model is adapted
on the k patients' recordings (`pocovid.training.adapt.adapt_model`) and scored on the test patients:
patient-level COVID-19 vs not AUC and accuracy (exam = patient, clips -> patient by the mean) and clip
balanced accuracy (clips whose label is one of the model's classes), before and after. Prints one row
per k: mean (sd) over the repeats. Nothing is trained but the adaptation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

DEFAULT_KS = "0,2,4,8,16,32,all"


def resolve_model(spec: str, fold: int | None) -> str:
    p = Path(spec)
    if not p.is_dir():
        return spec
    cand = p / (f"fold{fold}.pt" if fold is not None else "model.pt")
    if not cand.is_file():
        folds = sorted(x.name for x in p.glob("fold*.pt"))
        sys.exit(f"error: {cand}: no such model file (fold models here: {', '.join(folds) or 'none'})")
    return str(cand)


def patient_labels(outs) -> dict[str, str]:
    from pocovid.data.index import exam_label

    groups: dict[str, list] = {}
    for it in outs.items:
        groups.setdefault(it.patient, []).append(it)
    return {p: exam_label(its) for p, its in groups.items()}


def scores(outs, clip_p: np.ndarray) -> dict:
    """Patient COVID-19 vs not (AUC, accuracy) and clip balanced accuracy of `clip_p` on `outs`."""
    from pocovid.evaluation.metrics import classification_metrics
    from pocovid.evaluation.targets import exam_metrics

    labels = patient_labels(outs)
    ex = exam_metrics(outs.patients(), clip_p, labels, outs.classes, method="mean").get("covid_vs_rest") or {}
    known = np.array([it.label in outs.classes for it in outs.items])
    y = np.array([outs.classes.index(it.label) for it, k in zip(outs.items, known) if k], int)
    clip = classification_metrics(y, clip_p[known], outs.classes) if known.any() else {}
    return {"auc": ex.get("auc"), "acc": ex.get("accuracy"), "clip_bacc": clip.get("balanced_accuracy")}


def split_patients(labels: dict[str, str], rng, test_fraction: float) -> tuple[list[str], list[str]]:
    """(test, pool): a stratified (COVID-19 vs not) random share of the patients for testing."""
    test, pool = [], []
    for positive in (True, False):
        ps = sorted(p for p, lab in labels.items() if (lab == "covid") == positive)
        rng.shuffle(ps)
        n = int(round(test_fraction * len(ps)))
        n = min(max(n, 1), len(ps) - 1) if len(ps) > 1 else len(ps)
        test += ps[:n]
        pool += ps[n:]
    return test, pool


def curve(model, outs, ks: list, method: str, repeats: int, test_fraction: float, seed: int) -> list[dict]:
    from pocovid.errors import PocovidError
    from pocovid.training.adapt import adapt_model, adapted_clip_probs

    labels = patient_labels(outs)
    patients = outs.patients()
    rows: dict = {}
    for r in range(repeats):
        rng = np.random.default_rng(seed + r)
        test, pool = split_patients(labels, rng, test_fraction)
        tmask = np.isin(patients, test)
        t_outs = outs.subset(tmask)
        before = scores(t_outs, adapted_clip_probs(model, t_outs))
        order = list(rng.permutation(pool))
        for k in ks:
            n = len(pool) if k == "all" else int(k)
            if n > len(pool):
                continue
            after = before
            if n:
                fit = outs.subset(np.isin(patients, order[:n]))
                try:
                    after = scores(t_outs, adapted_clip_probs(adapt_model(model, fit, method), t_outs))
                except PocovidError:  # e.g. k patients with no label among the classes: no adaptation
                    pass
            rows.setdefault(str(k), []).append((n, len(test), before, after))
    return [{"k": k, "runs": v} for k, v in rows.items()]


def _cell(vals: list) -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return "   —      "
    return f"{np.mean(v):.3f} ({np.std(v):.3f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="model file, 'default', or a run folder")
    ap.add_argument("local", nargs="+", help="the local labelled folder(s)")
    ap.add_argument("--fold", type=int, default=None, help="a run folder's fold model (fold<K>.pt)")
    ap.add_argument("--method", default="calibrate", help="adaptation method (pocovid.training.adapt.ADAPT_METHODS)")
    ap.add_argument("--ks", default=DEFAULT_KS, help=f"patients used for adaptation (default {DEFAULT_KS})")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--test-fraction", type=float, default=1 / 3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    from pocovid.data import load_index
    from pocovid.errors import PocovidError
    from pocovid.inference import load
    from pocovid.training.adapt import ADAPT_METHODS, local_outputs

    if a.method not in ADAPT_METHODS:
        sys.exit(f"error: --method: unknown {a.method!r} (known: {', '.join(ADAPT_METHODS)})")
    ks = [k if k == "all" else int(k) for k in a.ks.split(",")]
    try:
        spec = resolve_model(a.model, a.fold)
        model = load(spec)
        index = load_index(a.local[0] if len(a.local) == 1 else a.local)
        outs = local_outputs(model, index, features=a.method == "heads", progress=True)
    except PocovidError as e:
        sys.exit(f"error: {e}")
    n_pat = len(set(outs.patients()))
    print(f"model {spec}; local {', '.join(a.local)}: {len(outs)} recordings of {n_pat} patients "
          f"({len(outs.skipped)} skipped); method {a.method}; {a.repeats} repeats, test share {a.test_fraction:.2f}")
    print(f"{'k':>4} {'n_fit':>5} {'n_test':>6} | {'patient AUC before':>18} {'after':>14} | "
          f"{'patient acc before':>18} {'after':>14} | {'clip bal.acc before':>19} {'after':>14}")
    for row in curve(model, outs, ks, a.method, a.repeats, a.test_fraction, a.seed):
        runs = row["runs"]
        cells = []
        for key in ("auc", "acc", "clip_bacc"):
            cells.append(f"{_cell([b[key] for _, _, b, _ in runs]):>18} {_cell([x[key] for _, _, _, x in runs]):>14}")
        print(f"{row['k']:>4} {np.mean([r[0] for r in runs]):5.1f} {np.mean([r[1] for r in runs]):6.1f} | "
              + " | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
