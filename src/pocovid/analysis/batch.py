"""Many recordings at once: one folder each and a summary table; a bad file never stops the batch,
and nothing the program did not write is ever deleted or overwritten."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pocovid.analysis.analyze import ARTIFACTS, AnalysisConfig, analyze_recording, resolve_model
from pocovid.analysis.result import AnalysisResult, FailedAnalysis
from pocovid.errors import PocovidError
from pocovid.files import path_text, write_text

SUMMARY_COLUMNS = ["file", "folder", "status", "label", "withheld", "probabilities", "uncertainty",
                   "uncertainty_method", "review_recommended", "out_of_distribution", "frames_disagree", "n_frames",
                   "error"]


@dataclass
class BatchEntry:
    """One recording of a batch: its result (or failure) and the folder its outputs are in."""

    file: str
    result: AnalysisResult | FailedAnalysis
    folder: Path | None = None

    @property
    def ok(self) -> bool:
        return isinstance(self.result, AnalysisResult)


@dataclass
class BatchResult:
    entries: list[BatchEntry] = field(default_factory=list)
    summary: Path | None = None

    @property
    def results(self) -> list[AnalysisResult]:
        return [e.result for e in self.entries if e.ok]

    @property
    def failures(self) -> list[str]:
        """One line per failed file: the file and the reason."""
        return [e.result.reason for e in self.entries if not e.ok]

    def to_json(self) -> list[dict]:
        """What `analyze --json` prints: every file's result or failure, in input order."""
        return [e.result.to_json() for e in self.entries]


def _safe_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).strip("._") or "recording"


def _is_ours(folder: Path) -> bool:
    """A folder an earlier pocovid analysis wrote: it holds only the names analyze writes."""
    if not folder.is_dir() or not (folder / "result.json").is_file():
        return False
    return all(p.name in ARTIFACTS or re.fullmatch(r"key_frame_\d+\.png", p.name) for p in folder.iterdir())


def _place(tmp: Path, out_dir: Path, base: str, taken: set[str]) -> Path:
    """Move a finished analysis folder into place as `base` (or `base-2`, ... when that name is taken
    in this batch or by something that is not an earlier analysis, which is left untouched)."""
    name, k = base, 2
    while name in taken or ((out_dir / name).exists() and not _is_ours(out_dir / name)):
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    dest = out_dir / name
    if dest.exists():  # an earlier analysis of ours: its files give way to the new ones
        for p in dest.iterdir():
            p.unlink()
        for p in tmp.iterdir():
            os.replace(p, dest / p.name)
        tmp.rmdir()
    else:
        os.replace(tmp, dest)
    return dest


def analyze_files(paths, model, out_dir: str | os.PathLike, config: AnalysisConfig | None = None,
                  progress: Callable[[int, int, str], None] | None = None) -> BatchResult:
    """Analyse many recordings: each gets its own folder `out_dir/<file stem>` (`scan`, `scan-2`
    when the name is taken; an earlier analysis's folder is replaced, anything else is never
    touched), and `out_dir/summary.csv` lists them all. Each analysis is written into a fresh
    hidden folder and renamed into place when it succeeded, so a failure leaves nothing behind. A
    file that fails is listed (file and reason, one line) and the rest are done."""
    cfg = config or AnalysisConfig()
    cfg.check()
    model, _ = resolve_model(model)  # loaded once for the whole batch
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    batch, taken = BatchResult(), set()
    paths = [Path(p) for p in paths]
    for i, p in enumerate(paths):
        if progress:
            progress(i, len(paths), str(p))
        tmp = Path(tempfile.mkdtemp(prefix=".pocovid-", dir=out_dir))
        try:
            r = analyze_recording(p, model, tmp, cfg)
        except Exception as e:  # one bad file never stops the batch
            shutil.rmtree(tmp, ignore_errors=True)  # made above, by us
            msg = " ".join((str(e) if isinstance(e, PocovidError) else f"{type(e).__name__}: {e}").split())
            msg = msg if str(p) in msg else f"{p}: {msg}"
            batch.entries.append(BatchEntry(str(p), FailedAnalysis(file=path_text(p), reason=path_text(msg))))
            continue
        batch.entries.append(BatchEntry(str(p), r, _place(tmp, out_dir, _safe_name(p.stem), taken)))
    batch.summary = write_summary(out_dir / "summary.csv", batch)
    if progress:
        progress(len(paths), len(paths), "")
    return batch


def _row(e: BatchEntry) -> dict:
    r = e.result
    if not e.ok:
        return {"file": e.file, "status": "failed", "error": r.reason}
    p = r.prediction
    row = {"file": e.file, "folder": e.folder.name if e.folder else "", "status": "ok",
           # a withheld result has no diagnosis: no label in the table either
           "label": "" if p.withheld else p.label, "withheld": p.withheld,
           "probabilities": " ".join(f"{c}={v:.4f}" for c, v in p.probabilities.items()),
           "uncertainty": r.uncertainty.score, "uncertainty_method": r.uncertainty.method,
           "review_recommended": r.review_recommended, "out_of_distribution": r.out_of_distribution,
           "frames_disagree": p.frames_disagree, "n_frames": r.sampling.n_frames_analyzed}
    return row | {f"p_{c}": v for c, v in p.probabilities.items()}


def write_summary(path: Path, batch: BatchResult) -> Path:
    """`summary.csv`, written atomically: one row per file. File names (and errors naming them) are
    written with `pocovid.files.path_text`: bytes that are not UTF-8 as `\\xNN`, as in `data index`."""
    rows = [_row(e) for e in batch.entries]
    pcols = sorted({k for r in rows for k in r if k.startswith("p_")})
    cols = SUMMARY_COLUMNS[:5] + pcols + SUMMARY_COLUMNS[6:]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        cells = {c: r.get(c, "") for c in cols}
        w.writerow({c: path_text(v) if isinstance(v, str) else v for c, v in cells.items()})
    return write_text(path, buf.getvalue())
