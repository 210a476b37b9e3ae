"""COVID-BLUES patients' COVID-19 AUC per exam method, out of fold, from finished training runs.

    python benchmarks/exam_methods.py runs/NAME [runs/OTHER ...]

Each method (`pocovid.models.exam`) is scored again on the run's out-of-fold clip outputs
(`RUN/cv/oof_targets.npz`) by `choose_exam_method`, which fits the logistic combiners on the other
folds' exams only; the AUC is over the COVID-BLUES patients whose diagnosis is one of the model's
classes (the model card's "24 patients" row).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sklearn.metrics import roc_auc_score

from pocovid.models.exam import EXAM_METHODS
from pocovid.training.cv import exam_methods_of_run


def blues_auc_per_method(run: Path) -> dict[str, tuple[float, int]]:
    _, exam_p, labels, classes = exam_methods_of_run(run)
    covid = classes.index("covid")
    out = {}
    for m in EXAM_METHODS:
        exams = [e for e in exam_p.get(m, {}) if e.startswith("covid-blues:")]
        y = [labels[e] == covid for e in exams]
        if len(set(y)) == 2:
            out[m] = (float(roc_auc_score(y, [exam_p[m][e][covid] for e in exams])), len(exams))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args(argv)
    for run in args.runs:
        got = blues_auc_per_method(run)
        print(f"{run}: " + "; ".join(f"{m} {auc:.3f} (n {k})" for m, (auc, k) in got.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
