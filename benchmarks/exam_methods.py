"""COVID-BLUES patients' COVID-19 AUC and accuracy per exam method, out of fold, from finished training runs.

    python benchmarks/exam_methods.py runs/NAME [runs/OTHER ...]

Each method (`pocovid.models.exam`) is scored again on the run's out-of-fold clip outputs
(`RUN/cv/oof_targets.npz`) by `choose_exam_method`, which fits the logistic combiners on the other
folds' exams only; the AUC and the accuracy (COVID-19 vs not: is the exam's most likely class covid)
are over the COVID-BLUES patients whose diagnosis is one of the model's classes (the model card's
"24 patients" row), then over all of them (`other` patients count as not COVID-19: "32 patients").

Beside them, a reference that needs no model: the experts' own readings of the same patients'
videos as the exam score (the LUS score, the sum of the experts' zone severities; the share of the
videos with B-lines), COVID-19 AUC over the same 24 patients and over all 32. How far the signs
that clinicians grade tell COVID-19 apart in this study.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from pocovid.models.exam import EXAM_METHODS
from pocovid.training.cv import exam_methods_of_run


def blues_scores_per_method(run: Path) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per exam method, out of fold, over the COVID-BLUES patients of the model's classes ("classes")
    and over all of them ("all": `other` patients count as not COVID-19): COVID-19 AUC, accuracy of
    COVID-19 vs not (is the exam's most likely class covid) and the number of patients."""
    _, exam_p, labels, classes = exam_methods_of_run(run)
    z = np.load(Path(run) / "cv" / "oof_targets.npz", allow_pickle=False)
    is_covid = {str(e): str(lab) == "covid" for e, lab in zip(z["exam"], z["label"])}
    covid = classes.index("covid")
    out = {}
    for m in EXAM_METHODS:
        blues = [e for e in exam_p.get(m, {}) if e.startswith("covid-blues:")]
        got = {}
        for group, exams in (("classes", [e for e in blues if e in labels]), ("all", blues)):
            y = np.array([is_covid[e] for e in exams])
            if len(set(y)) == 2:
                p = np.array([exam_p[m][e] for e in exams])
                got[group] = (float(roc_auc_score(y, p[:, covid])),
                              float(np.mean((p.argmax(1) == covid) == y)), len(exams))
        if got:
            out[m] = got
    return out


def experts_reference(run: Path, dataset: str = "covid-blues") -> dict[str, tuple[float, float]]:
    """COVID-19 AUC of the experts' readings per patient: {reading: (AUC over the patients of the
    model's classes, AUC over all)}; from the run's cv/oof_targets.npz, no model output used."""
    z = np.load(run / "cv" / "oof_targets.npz", allow_pickle=False)
    names = list(z["finding_names"])
    sel = z["dataset"] == dataset
    exams = sorted(set(z["exam"][sel]))
    of = [sel & (z["exam"] == e) for e in exams]
    label = np.array([z["label"][m][0] for m in of])
    readings = {"LUS score": np.array([np.nansum(z["truth_severity"][m]) for m in of])}
    if "b_lines" in names:
        b = names.index("b_lines")
        readings["B-lines share"] = np.array([np.nanmean(z["truth_findings"][m, b]) for m in of])
    covid, ours = label == "covid", np.isin(label, list(z["classes"]))
    return {k: (float(roc_auc_score(covid[ours], v[ours])), float(roc_auc_score(covid, v)))
            for k, v in readings.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args(argv)
    for run in args.runs:
        got = blues_scores_per_method(run)
        for group in ("classes", "all"):
            print(f"{run}, COVID-19 AUC / accuracy, {group} patients: "
                  + "; ".join(f"{m} {g[group][0]:.3f} / {g[group][1]:.3f} (n {g[group][2]})"
                              for m, g in got.items() if group in g))
    ref = experts_reference(args.runs[0])
    print("experts' own readings, no model (AUC: the model's classes / all patients): "
          + "; ".join(f"{k} {a:.3f} / {b:.3f}" for k, (a, b) in ref.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
