"""Patient-grouped, class-stratified folds, their JSON file (docs/splits.md), and a leak check.

A patient's recordings always land in one fold, whatever their labels. Folds come from scikit-learn's
`StratifiedGroupKFold` (group = patient, stratified by label, and by dataset when there are several)
with shuffling; several shuffles derived from the seed are tried and the most balanced assignment is
kept, so the result is deterministic for a seed and every fold holds every class whenever the patients
allow it. Two other modes hold out a whole dataset (`lodo`) or a whole source (`loso`) per fold.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import warnings as _warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pocovid import __version__
from pocovid.data.index import DatasetIndex, DatasetItem, dataset_of_folder, exam_label
from pocovid.data.labels import CLASSES
from pocovid.errors import PocovidError

SPLIT_VERSION = 2  # the newest this pocovid reads; one-dataset k-fold files are still written as 1
#: Split modes: patient-grouped k folds; leave one dataset out; leave one source out (POCUS `Source ID`).
MODES = ("kfold", "lodo", "loso")
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
    dataset: str = ""  # the item's dataset: its root is `Splits.roots[dataset]` (else `Splits.root`)
    exam: str = ""  # the patient's visit the recording belongs to ("" = the patient)

    def to_dict(self) -> dict:
        d = {"path": self.path, "label": self.label, "patient": self.patient, "kind": self.kind,
             "probe": self.probe, "label_uncertain": self.label_uncertain}
        if self.dataset:
            d["dataset"] = self.dataset
        if self.exam and self.exam != self.patient:
            d["exam"] = self.exam
        return d

    @classmethod
    def of(cls, it: DatasetItem) -> "SplitItem":
        return cls(path=it.path, label=it.label, patient=it.patient, kind=it.kind, probe=it.probe,
                   label_uncertain=it.label_uncertain, dataset=it.dataset, exam=it.exam)


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
    mode: str = "kfold"
    roots: dict[str, str] = field(default_factory=dict)  # dataset -> root, when there are several
    fold_names: list[str] | None = None  # lodo: the dataset; loso: the source held out

    def datasets(self) -> list[str]:
        """The datasets of the items, in the order of `roots` (the order they were given in)."""
        present = list(dict.fromkeys(it.dataset for it in self.items()))
        return [d for d in self.roots if d in present] + [d for d in present if d not in self.roots]

    def root_of(self, item: SplitItem, root: str | os.PathLike | dict | None = None) -> Path | None:
        """The folder `item.path` is relative to: `root` (a folder, or dataset -> folder) if given,
        else the recorded roots."""
        if isinstance(root, dict):
            r = root.get(item.dataset)
            return Path(r) if r is not None else None
        if root is not None:
            return Path(root)
        r = self.roots.get(item.dataset, self.root)
        return Path(r) if r else None

    def match_roots(self, folders: list[str | os.PathLike]) -> dict[str, Path]:
        """dataset -> folder for the folders given on a command line: a folder whose layout names a
        dataset of the split (`pocovid.data.index.dataset_of_folder`) is that dataset's; the others
        take the remaining datasets in the split's order. Raises when the counts differ."""
        datasets = self.datasets()
        if len(folders) != len(datasets):
            names = ", ".join(d or "-" for d in datasets)
            raise PocovidError(f"the split file holds {len(datasets)} dataset(s) ({names}) but {len(folders)} "
                               "folder(s) were given")
        out: dict[str, Path] = {}
        rest = []
        for f in folders:
            name = dataset_of_folder(Path(f))
            if name in datasets and name not in out:
                out[name] = Path(f)
            else:
                rest.append(Path(f))
        for ds, f in zip([d for d in datasets if d not in out], rest):
            out[ds] = f
        return out

    def exams(self, fold: int) -> list[dict]:
        """The exams of a fold with their patient-level label (`pocovid.data.index.exam_label`)."""
        groups: dict[tuple[str, str], list[SplitItem]] = {}
        for it in self.folds[fold]:
            groups.setdefault((it.dataset, it.exam or it.patient), []).append(it)
        return [{"exam": ex, "patient": its[0].patient, "dataset": ds, "label": exam_label(its),
                 "n_recordings": len(its)} for (ds, ex), its in sorted(groups.items())]

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

    def abspath(self, item: SplitItem | str, root: str | os.PathLike | dict | None = None) -> Path:
        if isinstance(item, SplitItem):
            return (self.root_of(item, root) or Path(".")) / item.path
        base = root if root is not None and not isinstance(root, dict) else (self.root or ".")
        return Path(base) / item

    def _all_classes(self) -> list[str]:
        extra = sorted({it.label for it in self.items()} - set(self.classes))
        return list(self.classes) + extra

    def table(self) -> str:
        """Per-fold class counts (recordings, and patients in brackets); with several datasets, then
        the same table for each dataset."""
        out = self._table(self.folds)
        datasets = self.datasets()
        if len(datasets) > 1 and self.mode == "kfold":
            for ds in datasets:
                out += f"\n{ds}:\n" + self._table([[it for it in f if it.dataset == ds] for f in self.folds],
                                                   notes=False)
        return out

    def _fold_label(self, k: int) -> str:
        return f"{k} {self.fold_names[k]}" if self.fold_names and k < len(self.fold_names) else str(k)

    def _table(self, folds: list[list[SplitItem]], notes: bool = True) -> str:
        labs = self._all_classes()
        view = Splits(folds=folds, root=self.root, seed=self.seed, n_folds=len(folds), classes=self.classes)
        counts, pcounts = view.counts(), view.patient_counts()
        labs = [lab for lab in labs if notes or any(c[lab] for c in counts)]
        cells = [[f"{counts[k][lab]} ({pcounts[k][lab]})" for lab in labs]
                 + [f"{len(view.folds[k])} ({len(view.patients(k))})"] for k in range(len(view.folds))]
        tot_p = {lab: len({it.patient for it in view.items() if it.label == lab}) for lab in labs}
        tot = [f"{sum(c[lab] for c in counts)} ({tot_p[lab]})" for lab in labs]
        tot.append(f"{len(view.items())} ({len({it.patient for it in view.items()})})")
        head = labs + ["total"]
        names = [self._fold_label(k) for k in range(len(folds))]
        w0 = max(5, *(len(n) for n in names))
        ws = [max(len(h), *(len(r[i]) for r in cells + [tot])) for i, h in enumerate(head)]
        lines = ["fold".ljust(w0) + "  " + "  ".join(h.rjust(w) for h, w in zip(head, ws))]
        for k, r in enumerate(cells):
            lines.append(names[k].ljust(w0) + "  " + "  ".join(v.rjust(w) for v, w in zip(r, ws)))
        lines.append("all".ljust(w0) + "  " + "  ".join(v.rjust(w) for v, w in zip(tot, ws)))
        if not notes:
            return "\n".join(lines)
        lines.append("recordings (patients) per fold and class")
        missing = [f"fold {k} has no {lab}" for k in range(len(view.folds)) for lab in self.classes
                   if counts[k].get(lab, 0) == 0]
        if missing:
            lines.append("note: " + "; ".join(missing[:8]) + (f"; ... {len(missing) - 8} more (fold, class) cells "
                                                              "empty" if len(missing) > 8 else ""))
        return "\n".join(lines)

    # ---------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        counts, pcounts = self.counts(), self.patient_counts()
        several = len(self.roots) > 1 or self.mode != "kfold"
        d = {
            "version": SPLIT_VERSION if several else 1,
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
                       "patients": self.patients(k), "exams": self.exams(k), "items": [it.to_dict() for it in f]}
                      for k, f in enumerate(self.folds)],
        }
        if several:  # written only when they say something: a one-dataset k-fold file stays version 1
            d["mode"] = self.mode
            d["datasets"] = self.datasets()
            d["roots"] = dict(self.roots)
            if self.fold_names:
                for f, name in zip(d["folds"], self.fold_names):
                    f["name"] = name
        return d

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
                                      label_uncertain=bool(it.get("label_uncertain", False)),
                                      dataset=str(it.get("dataset", "")), exam=str(it.get("exam", ""))))
            folds.append(fold)
        recorded = None
        if all(isinstance(f, dict) and isinstance(f.get("counts"), dict) for f in d["folds"]):
            recorded = [{str(a): int(b) for a, b in f["counts"].items()} for f in d["folds"]]
        roots = d.get("roots") or {}
        if not isinstance(roots, dict) or not all(isinstance(r, str) for r in roots.values()):
            raise bad("'roots' is not an object of folders")
        mode = str(d.get("mode", "kfold"))
        if mode not in MODES:
            raise bad(f"unknown mode '{mode}'")
        names = [f.get("name") for f in d["folds"]]
        return cls(folds=folds, root=d.get("root"), seed=int(d.get("seed", 0)),
                   n_folds=int(d.get("n_folds", len(folds))), classes=list(d.get("classes") or []),
                   probes=d.get("probes"), group_rule=str(d.get("group_rule", "")),
                   strategy=str(d.get("strategy", "")), created=str(d.get("created", "")), version=v,
                   recorded_counts=recorded, mode=mode, roots={str(k): r for k, r in roots.items()},
                   fold_names=[str(n) for n in names] if all(isinstance(n, str) for n in names) and names else None)

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


def patient_folds(index: DatasetIndex, n_folds: int = 5, seed: int = 0, tries: int = 64,
                  mode: str = "kfold") -> Splits:
    """Split an index into folds by patient. Deterministic for a seed.

    mode "kfold": `n_folds` folds stratified by label (and by dataset when the index holds several):
    `tries` shuffles are drawn (the first with `random_state=seed`, the rest from a generator seeded
    with `seed`); the assignment with the fewest folds lacking a (dataset,) class, then the most even
    class and fold sizes, is kept (the earliest on ties).
    mode "lodo": one fold per dataset (leave one dataset out); "loso": one fold per source (POCUS
    `Source ID`; a dataset without sources is one source). `n_folds` and `seed` do not apply to them.
    """
    if mode not in MODES:
        raise PocovidError(f"unknown split mode '{mode}' (known: {', '.join(MODES)})")
    items = list(index.items)
    if not items:
        raise PocovidError(f"{index.root}: no recordings to split")
    groups = np.array([it.patient for it in items])
    y = np.array([it.label for it in items])
    labels = [lab for lab in CLASSES if lab in set(y.tolist())] + sorted(set(y.tolist()) - set(CLASSES))
    datasets = list(dict.fromkeys(it.dataset for it in items))
    names = None
    if mode == "kfold":
        best, strategy = _kfold(y, groups, [it.dataset for it in items], n_folds, seed, tries, index)
    else:
        best, names = _held_out(items, mode, index)
        n_folds, strategy = len(names), HELD_OUT[mode]
    folds: list[list[SplitItem]] = [[] for _ in range(n_folds)]
    for it, k in zip(items, best):
        folds[int(k)].append(SplitItem.of(it))
    for f in folds:
        f.sort(key=lambda s: (s.dataset, s.path))
    classes = list(index.classes) if index.classes else labels
    probes = list(index.probes) if index.probes else sorted({it.probe for it in items})
    roots = {ds: str(r) for ds, r in index.roots.items()} if index.roots else (
        {datasets[0]: str(index.root)} if len(datasets) == 1 and datasets[0] else {})
    return Splits(folds=folds, root=str(index.root) if len(datasets) == 1 else None, seed=int(seed),
                  n_folds=n_folds, classes=classes, probes=probes, group_rule=GROUP_RULE, strategy=strategy,
                  created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                  mode=mode, roots=roots, fold_names=names)


HELD_OUT = {"lodo": "leave one dataset out: one fold per dataset",
            "loso": "leave one source out: one fold per source (POCUS 'Source ID'; a dataset without "
                    "sources is one source); a patient's recordings go with its most frequent source"}


def _kfold(y, groups, datasets, n_folds, seed, tries, index) -> tuple[np.ndarray, str]:
    if n_folds < 2:
        raise PocovidError(f"--folds must be 2 or more (got {n_folds})")
    n_groups = len(set(groups.tolist()))
    if n_groups < n_folds:
        raise PocovidError(f"{index.root}: only {n_groups} patient(s), too few for {n_folds} folds")
    several = len(set(datasets)) > 1
    strata = np.array([f"{d}/{lab}" for d, lab in zip(datasets, y)]) if several else y
    labels = sorted(set(strata.tolist()))
    rng = np.random.default_rng(seed)
    states = [int(seed)] + [int(s) for s in rng.integers(0, 2 ** 31 - 1, size=max(tries, 1) - 1)]
    best, best_score = None, None
    for rs in states:
        fold_of = _assign(strata, groups, n_folds, rs)
        sc = _score(fold_of, strata, groups, n_folds, labels)
        if best_score is None or sc < best_score:
            best, best_score = fold_of, sc
    strategy = STRATEGY.format(tries=len(states))
    return best, strategy + ("; stratified by dataset and label" if several else "")


def _held_out(items: list[DatasetItem], mode: str, index: DatasetIndex) -> tuple[np.ndarray, list[str]]:
    """Fold of every item and the fold names, one fold per dataset (lodo) or source (loso)."""
    def key(it: DatasetItem) -> str:
        if mode == "lodo":
            return it.dataset or "dataset"
        return f"{it.dataset}:src{it.source}" if it.source else (it.dataset or "dataset")

    per_patient: dict[str, Counter] = {}
    for it in items:
        per_patient.setdefault(it.patient, Counter())[key(it)] += 1
    # a patient whose recordings name several sources goes with its most frequent one (then the first by name)
    home = {p: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for p, c in per_patient.items()}
    order = {ds: i for i, ds in enumerate(dict.fromkeys(it.dataset or "dataset" for it in items))}
    names = sorted(set(home.values()), key=lambda n: (order.get(n.split(":")[0], 0), _natural(n)))
    if len(names) < 2:
        what = "dataset" if mode == "lodo" else "source"
        raise PocovidError(f"{index.root}: only one {what} ({names[0] if names else 'none'}); "
                           f"--mode {mode} needs two or more")
    return np.array([names.index(home[it.patient]) for it in items]), names


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# ----------------------------------------------------------------------------------------- check


def check_split(splits: Splits, root: str | os.PathLike | None = None) -> list[str]:
    """Problems with a split, one line each; empty when it is sound.

    A patient in two folds (named, with the folds), a file listed twice, a file missing under `root`
    (default: the recorded root), an empty fold, a fold count or class-count table that does not
    match the items.
    """
    problems: list[str] = []
    if splits.n_folds != len(splits.folds):
        problems.append(f"n_folds is {splits.n_folds} but the file holds {len(splits.folds)} fold(s)")
    folds_of: dict[str, set[int]] = {}
    where: dict[str, list[int]] = {}
    for k, f in enumerate(splits.folds):
        if not f:
            problems.append(f"fold {k} is empty")
        for it in f:
            folds_of.setdefault(it.patient, set()).add(k)
            where.setdefault(f"{it.dataset}\0{it.path}", []).append(k)
    for pat in sorted(folds_of):
        ks = sorted(folds_of[pat])
        if len(ks) > 1:
            files = sorted({it.path.rsplit("/", 1)[-1] for k in ks for it in splits.folds[k] if it.patient == pat})
            problems.append(f"patient {pat} is in folds {', '.join(map(str, ks))} (leak): "
                            + ", ".join(files[:4]) + (" ..." if len(files) > 4 else ""))
    for p in sorted(where):
        if len(where[p]) > 1:
            shown = _shown(p) if len(splits.datasets()) > 1 else p.partition("\0")[2]
            problems.append(f"file {shown} is listed {len(where[p])} times "
                            f"(folds {', '.join(map(str, where[p]))})")
    seen: set[tuple[str, str]] = set()
    for it in sorted(splits.items(), key=lambda i: (i.dataset, i.path)):
        if (it.dataset, it.path) in seen:
            continue
        seen.add((it.dataset, it.path))
        base = splits.root_of(it, root)
        if base is None and it.dataset and splits.roots:
            problems.append(f"file {it.dataset}:{it.path}: no root for dataset '{it.dataset}'")
            continue
        fp = (base / it.path) if base is not None else Path(it.path)
        if not fp.is_file():
            problems.append(f"file missing: {fp}")
    if splits.mode == "lodo" and splits.fold_names:
        for k, (f, name) in enumerate(zip(splits.folds, splits.fold_names)):
            other = sorted({it.dataset for it in f} - {name})
            if other:
                problems.append(f"fold {k} holds out dataset {name} but lists recordings of {', '.join(other)}")
    if splits.recorded_counts is not None:
        for k, (rec, now) in enumerate(zip(splits.recorded_counts, splits.counts())):
            if {a: b for a, b in rec.items() if b} != {a: b for a, b in now.items() if b}:
                problems.append(f"fold {k}: the recorded class counts {rec} do not match its items {now}")
    return problems


def _shown(key: str) -> str:
    """'pocus\0a/b.mp4' -> 'pocus:a/b.mp4'; a path without dataset as it is."""
    ds, _, path = key.partition("\0")
    return f"{ds}:{path}" if ds and path else (path or ds)
