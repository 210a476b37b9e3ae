"""Patient-grouped, class-stratified folds, their JSON file (docs/splits.md), and a leak check.

A patient's recordings always land in one fold, whatever their labels. Folds come from scikit-learn's
`StratifiedGroupKFold` (group = patient, stratified by label) with shuffling; several shuffles derived
from the seed are tried and the most balanced assignment is kept, so the result is deterministic for a
seed and every fold holds every class whenever the patients allow it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import warnings as _warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pocovid import __version__
from pocovid.data.index import DatasetIndex
from pocovid.data.labels import CLASSES
from pocovid.errors import PocovidError

SPLIT_VERSION = 1
GROUP_RULE = ("patient = metadata 'Source ID' + 'Patient ID / Name' (src<S>-pat<P>); without metadata the "
              "sub-folder of a class folder (dir-<name>), else the file-name rule (file-<key>); see docs/splits.md")
STRATEGY = "StratifiedGroupKFold(shuffle=True), best of {tries} shuffles seeded from the seed"


@dataclass
class SplitItem:
    path: str  # relative to the split's root, '/'-separated
    label: str
    patient: str
    kind: str
    probe: str
    label_uncertain: bool = False

    def to_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "patient": self.patient, "kind": self.kind,
                "probe": self.probe, "label_uncertain": self.label_uncertain}


@dataclass
class Splits:
    """k folds of recordings; fold k is the test fold of round k, the others its training data."""

    folds: list[list[SplitItem]]
    root: str | None
    seed: int
    n_folds: int
    classes: list[str]
    probes: list[str] | None = None
    group_rule: str = GROUP_RULE
    strategy: str = ""
    created: str = ""
    version: int = SPLIT_VERSION
    recorded_counts: list[dict[str, int]] | None = field(default=None, repr=False)  # as read from a file

    # ---------------------------------------------------------------------------- views
    def items(self) -> list[SplitItem]:
        return [it for f in self.folds for it in f]

    def counts(self) -> list[dict[str, int]]:
        """Per fold: class -> number of recordings (every class of `classes`, zeros included)."""
        out = []
        for f in self.folds:
            c = Counter(it.label for it in f)
            out.append({lab: int(c.get(lab, 0)) for lab in self._all_classes()})
        return out

    def patient_counts(self) -> list[dict[str, int]]:
        """Per fold: class -> number of patients with a recording of that class."""
        out = []
        for f in self.folds:
            c = Counter(lab for lab, _ in {(it.label, it.patient) for it in f})
            out.append({lab: int(c.get(lab, 0)) for lab in self._all_classes()})
        return out

    def patients(self, fold: int) -> list[str]:
        return sorted({it.patient for it in self.folds[fold]})

    def train_test(self, fold: int) -> tuple[list[SplitItem], list[SplitItem]]:
        """(training items, test items) for round `fold`."""
        test = list(self.folds[fold])
        train = [it for k, f in enumerate(self.folds) if k != fold for it in f]
        return train, test

    def abspath(self, item: SplitItem | str, root: str | os.PathLike | None = None) -> Path:
        p = item.path if isinstance(item, SplitItem) else item
        base = root if root is not None else (self.root or ".")
        return Path(base) / p

    def _all_classes(self) -> list[str]:
        extra = sorted({it.label for it in self.items()} - set(self.classes))
        return list(self.classes) + extra

    def table(self) -> str:
        """Per-fold class counts (recordings, and patients in brackets)."""
        labs = self._all_classes()
        counts, pcounts = self.counts(), self.patient_counts()
        cells = [[f"{counts[k][lab]} ({pcounts[k][lab]})" for lab in labs]
                 + [f"{len(self.folds[k])} ({len(self.patients(k))})"] for k in range(len(self.folds))]
        tot_p = {lab: len({it.patient for it in self.items() if it.label == lab}) for lab in labs}
        tot = [f"{sum(c[lab] for c in counts)} ({tot_p[lab]})" for lab in labs]
        tot.append(f"{len(self.items())} ({len({it.patient for it in self.items()})})")
        head = labs + ["total"]
        ws = [max(len(h), *(len(r[i]) for r in cells + [tot])) for i, h in enumerate(head)]
        lines = ["fold   " + "  ".join(h.rjust(w) for h, w in zip(head, ws))]
        for k, r in enumerate(cells):
            lines.append(f"{k:<5}  " + "  ".join(v.rjust(w) for v, w in zip(r, ws)))
        lines.append("all    " + "  ".join(v.rjust(w) for v, w in zip(tot, ws)))
        lines.append("recordings (patients) per fold and class")
        missing = [f"fold {k} has no {lab}" for k in range(len(self.folds)) for lab in self.classes
                   if counts[k].get(lab, 0) == 0]
        if missing:
            lines.append("note: " + "; ".join(missing))
        return "\n".join(lines)

    # ---------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        counts, pcounts = self.counts(), self.patient_counts()
        return {
            "version": self.version,
            "created": self.created,
            "pocovid": __version__,
            "root": self.root,
            "seed": self.seed,
            "n_folds": self.n_folds,
            "group_rule": self.group_rule,
            "strategy": self.strategy,
            "classes": list(self.classes),
            "probes": list(self.probes) if self.probes is not None else None,
            "counts": [{"fold": k, **counts[k], "total": len(self.folds[k]), "patients": len(self.patients(k))}
                       for k in range(len(self.folds))],
            "folds": [{"fold": k, "counts": counts[k], "patient_counts": pcounts[k],
                       "patients": self.patients(k), "items": [it.to_dict() for it in f]}
                      for k, f in enumerate(self.folds)],
        }

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, d: dict, source: str = "split file") -> "Splits":
        def bad(why: str) -> PocovidError:
            return PocovidError(f"{source}: not a pocovid split file ({why})")

        if not isinstance(d, dict):
            raise bad("top level is not an object")
        v = d.get("version")
        if not isinstance(v, int):
            raise bad("no 'version'")
        if v > SPLIT_VERSION:
            raise PocovidError(f"{source}: split file version {v} is newer than this pocovid reads "
                               f"({SPLIT_VERSION}); update pocovid")
        if not isinstance(d.get("folds"), list):
            raise bad("no 'folds' list")
        folds = []
        for k, f in enumerate(d["folds"]):
            items = f.get("items") if isinstance(f, dict) else None
            if not isinstance(items, list):
                raise bad(f"fold {k} has no 'items' list")
            fold = []
            for j, it in enumerate(items):
                if not isinstance(it, dict) or not all(isinstance(it.get(x), str)
                                                       for x in ("path", "label", "patient")):
                    raise bad(f"fold {k} item {j} lacks path / label / patient")
                fold.append(SplitItem(path=it["path"], label=it["label"], patient=it["patient"],
                                      kind=str(it.get("kind", "")), probe=str(it.get("probe", "")),
                                      label_uncertain=bool(it.get("label_uncertain", False))))
            folds.append(fold)
        recorded = None
        if all(isinstance(f, dict) and isinstance(f.get("counts"), dict) for f in d["folds"]):
            recorded = [{str(a): int(b) for a, b in f["counts"].items()} for f in d["folds"]]
        return cls(folds=folds, root=d.get("root"), seed=int(d.get("seed", 0)),
                   n_folds=int(d.get("n_folds", len(folds))), classes=list(d.get("classes") or []),
                   probes=d.get("probes"), group_rule=str(d.get("group_rule", "")),
                   strategy=str(d.get("strategy", "")), created=str(d.get("created", "")), version=v,
                   recorded_counts=recorded)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Splits":
        path = Path(path)
        if not path.is_file():
            raise PocovidError(f"{path}: no such file")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise PocovidError(f"{path}: not a pocovid split file (invalid JSON at line {e.lineno}: {e.msg})") from None
        except UnicodeDecodeError:
            raise PocovidError(f"{path}: not a pocovid split file (not UTF-8 text)") from None
        return cls.from_dict(d, source=str(path))


def load_splits(path: str | os.PathLike) -> Splits:
    return Splits.load(path)


# -------------------------------------------------------------------------------- fold assignment


def _score(fold_of: np.ndarray, y: np.ndarray, groups: np.ndarray, n_folds: int, labels: list[str]):
    """Lower is better: (missing fold x class cells, imbalance)."""
    missing = 0
    imbalance = 0.0
    for lab in labels:
        m = y == lab
        per_fold = np.bincount(fold_of[m], minlength=n_folds).astype(float)
        missing += int((per_fold == 0).sum())
        pats = np.array([len(set(groups[m & (fold_of == k)])) for k in range(n_folds)], dtype=float)
        imbalance += per_fold.std() / max(per_fold.mean(), 1e-9) + pats.std() / max(pats.mean(), 1e-9)
    sizes = np.bincount(fold_of, minlength=n_folds).astype(float)
    if (sizes == 0).any():
        missing += 10 ** 6  # an empty fold is never acceptable
    imbalance += sizes.std() / max(sizes.mean(), 1e-9)
    return missing, round(float(imbalance), 9)


def _assign(y: np.ndarray, groups: np.ndarray, n_folds: int, random_state: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    fold_of = np.full(len(y), -1, dtype=int)
    sgkf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=int(random_state))
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore", UserWarning)  # "least populated class has only N members"
        for k, (_, test) in enumerate(sgkf.split(np.zeros(len(y)), y, groups)):
            fold_of[test] = k
    return fold_of


def patient_folds(index: DatasetIndex, n_folds: int = 5, seed: int = 0, tries: int = 64) -> Splits:
    """Split an index into `n_folds` folds by patient, stratified by label. Deterministic for a seed.

    `tries` shuffles are drawn (the first with `random_state=seed`, the rest from a generator seeded
    with `seed`); the assignment with the fewest folds lacking a class, then the most even class
    and fold sizes, is kept (the earliest on ties).
    """
    items = list(index.items)
    if n_folds < 2:
        raise PocovidError(f"--folds must be 2 or more (got {n_folds})")
    if not items:
        raise PocovidError(f"{index.root}: no recordings to split")
    groups = np.array([it.patient for it in items])
    y = np.array([it.label for it in items])
    n_groups = len(set(groups.tolist()))
    if n_groups < n_folds:
        raise PocovidError(f"{index.root}: only {n_groups} patient(s), too few for {n_folds} folds")
    labels = [lab for lab in CLASSES if lab in set(y.tolist())] + sorted(set(y.tolist()) - set(CLASSES))
    rng = np.random.default_rng(seed)
    states = [int(seed)] + [int(s) for s in rng.integers(0, 2 ** 31 - 1, size=max(tries, 1) - 1)]
    best, best_score = None, None
    for rs in states:
        fold_of = _assign(y, groups, n_folds, rs)
        sc = _score(fold_of, y, groups, n_folds, labels)
        if best_score is None or sc < best_score:
            best, best_score = fold_of, sc
    folds: list[list[SplitItem]] = [[] for _ in range(n_folds)]
    for it, k in zip(items, best):
        folds[int(k)].append(SplitItem(path=it.path, label=it.label, patient=it.patient, kind=it.kind,
                                       probe=it.probe, label_uncertain=it.label_uncertain))
    for f in folds:
        f.sort(key=lambda s: s.path)
    classes = list(index.classes) if index.classes else labels
    probes = list(index.probes) if index.probes else sorted({it.probe for it in items})
    return Splits(folds=folds, root=str(index.root), seed=int(seed), n_folds=n_folds, classes=classes,
                  probes=probes, group_rule=GROUP_RULE, strategy=STRATEGY.format(tries=len(states)),
                  created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat())


# ----------------------------------------------------------------------------------------- check


def check_split(splits: Splits, root: str | os.PathLike | None = None) -> list[str]:
    """Problems with a split, one line each; empty when it is sound.

    A patient in two folds (named, with the folds), a file listed twice, a file missing under `root`
    (default: the recorded root), an empty fold, a fold count or class-count table that does not
    match the items.
    """
    problems: list[str] = []
    base = Path(root) if root is not None else (Path(splits.root) if splits.root else None)
    if splits.n_folds != len(splits.folds):
        problems.append(f"n_folds is {splits.n_folds} but the file holds {len(splits.folds)} fold(s)")
    folds_of: dict[str, set[int]] = {}
    where: dict[str, list[int]] = {}
    for k, f in enumerate(splits.folds):
        if not f:
            problems.append(f"fold {k} is empty")
        for it in f:
            folds_of.setdefault(it.patient, set()).add(k)
            where.setdefault(it.path, []).append(k)
    for pat in sorted(folds_of):
        ks = sorted(folds_of[pat])
        if len(ks) > 1:
            files = sorted({it.path.rsplit("/", 1)[-1] for k in ks for it in splits.folds[k] if it.patient == pat})
            problems.append(f"patient {pat} is in folds {', '.join(map(str, ks))} (leak): "
                            + ", ".join(files[:4]) + (" ..." if len(files) > 4 else ""))
    for p in sorted(where):
        if len(where[p]) > 1:
            problems.append(f"file {p} is listed {len(where[p])} times (folds {', '.join(map(str, where[p]))})")
    for p in sorted(where):
        fp = (base / p) if base is not None else Path(p)
        if not fp.is_file():
            problems.append(f"file missing: {fp}")
    if splits.recorded_counts is not None:
        for k, (rec, now) in enumerate(zip(splits.recorded_counts, splits.counts())):
            if {a: b for a, b in rec.items() if b} != {a: b for a, b in now.items() if b}:
                problems.append(f"fold {k}: the recorded class counts {rec} do not match its items {now}")
    return problems
