"""Many recordings at once: one folder each and a summary table; a bad file never stops the batch,
and nothing the program did not write is ever deleted or overwritten."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from pocovid.analysis.analyze import ARTIFACTS, AnalysisConfig, analyze_recording, frame_pass_of, resolve_model
from pocovid.analysis.result import SCHEMA_VERSION, AnalysisResult, FailedAnalysis, ModelSummary
from pocovid.errors import PocovidError
from pocovid.files import path_text, write_text
from pocovid.models import model_summary
from pocovid.models.runtime import read_graph_file, runtime_precision

SUMMARY_COLUMNS = ["file", "folder", "status", "skipped", "label", "withheld", "probabilities", "entropy",
                   "member_std", "review_recommended", "out_of_distribution", "frames_disagree", "n_frames", "error"]
ENGINES = ("local", "ray")


@dataclass
class BatchEntry:
    """One recording of a batch: its result (or failure) and the folder its outputs are in;
    `skipped`: the finished result of an earlier run, kept (`resume`)."""

    file: str
    result: AnalysisResult | FailedAnalysis
    folder: Path | None = None
    skipped: bool = False

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

    @property
    def skipped(self) -> list[BatchEntry]:
        """Recordings whose finished result of an earlier run was kept."""
        return [e for e in self.entries if e.skipped]

    def to_json(self) -> list[dict]:
        """What `analyze --json` prints: every file's result or failure, in input order."""
        return [e.result.to_json() for e in self.entries]


class BatchProgress(NamedTuple):
    """What a batch reports as it goes: recording `i` of `n` (0-based) is at `stage` ("start", then
    `analyze_recording`'s stages with `fraction` of that recording done, "done", "failed"; or
    "skipped" / "redo" when resuming); `note` says more (a failure's reason, the folder of a skipped
    result, why an earlier result is redone)."""

    i: int
    n: int
    file: str
    stage: str
    fraction: float = 0.0
    note: str = ""


def _safe_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).strip("._") or "recording"


SOURCE_RECORD = ".pocovid-source"  # in each result folder: which recording it analysed (no path: its hash)


def _is_ours(folder: Path) -> bool:
    """A folder an earlier pocovid analysis wrote: it holds only the names analyze writes."""
    if not folder.is_dir() or not (folder / "result.json").is_file():
        return False
    return all(p.name in ARTIFACTS or p.name == SOURCE_RECORD or re.fullmatch(r"key_frame_\d+(_[a-z_]+)?\.png", p.name)
               for p in folder.iterdir())


def source_record(path) -> dict | None:
    """What tells a recording apart and whether it changed: the SHA-256 of its real path (the
    path itself is not written: output folders get shared), its size and modification time;
    None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    real = os.fsencode(os.path.realpath(path))
    return {"path_sha256": hashlib.sha256(real).hexdigest(), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _place(tmp: Path, out_dir: Path, base: str, taken: set[str], own: str | None = None) -> Path:
    """Move a finished analysis folder into place as `base` (or `base-2`, ... when that name is taken
    in this batch or by something that is not an earlier analysis, which is left untouched); `own`:
    the recording's own earlier folder (an outdated result), replaced in place."""
    name, k = base, 2
    if own is not None and _is_ours(out_dir / own):
        name = own
    else:
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


def failure_reason(path, e: BaseException) -> str:
    """One line naming the file: a `PocovidError`'s own text, else the exception's type and text."""
    msg = " ".join((str(e) if isinstance(e, PocovidError) else f"{type(e).__name__}: {e}").split())
    return path_text(msg if str(path) in msg else f"{path}: {msg}")


# ------------------------------------------------------------------------------ resuming

def earlier_analyses(out_dir: Path) -> dict[str, tuple[Path, dict]]:
    """Folders in `out_dir` that an earlier analysis wrote, by the recording they analysed (its
    `source_record`'s path hash) -> (folder, that record); the first folder, by name, when two
    analysed one recording. Folders without a readable record are left out (their recording is
    analysed again)."""
    found: dict[str, tuple[Path, dict]] = {}
    if not out_dir.is_dir():
        return found
    for d in sorted(out_dir.iterdir()):
        if d.name.startswith(".") or not _is_ours(d):
            continue
        try:
            rec = json.loads((d / SOURCE_RECORD).read_text(encoding="utf-8"))
            key = rec["path_sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(key, str):
            found.setdefault(key, (d, rec))
    return found


def _settings_of(r: AnalysisResult) -> dict:
    return {"rate_hz": r.sampling.rate_hz, "max_frames": r.sampling.max_frames, "crop": r.sampling.crop,
            "explainer": r.explainer, "report": r.report is not None, "overlay_video": r.overlay_video is not None}


def _settings_wanted(cfg: AnalysisConfig, r: AnalysisResult) -> dict:
    return {"rate_hz": cfg.rate_hz, "max_frames": cfg.max_frames, "crop": cfg.crop, "explainer": cfg.explainer,
            "report": cfg.report, "overlay_video": bool(cfg.overlay_video and r.media.kind == "video")}


def _unrecorded_settings(cfg: AnalysisConfig) -> dict:
    """Settings that change the outputs but that result.json does not hold: kept in the folder's
    source record, so that `--resume` redoes a result made with other ones."""
    return {"key_frames": cfg.key_frames, "gradcam_layer": cfg.gradcam_layer, "full_screen": cfg.full_screen,
            "show_path": cfg.show_path}


def finished_result(folder: Path, record: dict, source: dict | None, model,
                    cfg: AnalysisConfig) -> tuple[AnalysisResult | None, str]:
    """(the result in `folder`, "") when it is a finished analysis that this call would write again:
    the recording unchanged (`record`, written with the folder, against `source`, its record now),
    the same result schema version, the same model (its `model_info`: backbone, classes, creation
    time, data fingerprint, ...; any runtime), the same frame-pass graph and precision (`cfg.graph`:
    the same file's SHA-256; none: the runtime's own graph, fp32, or bf16 on openvino-bf16 where the
    CPU has it), the same settings (sampling, crop, explainer, report, overlay video) and every output
    file there; else (None, why not)."""
    if source is None or {k: record.get(k) for k in source} != source:
        return None, "the recording changed since"
    try:
        r = AnalysisResult.model_validate_json((folder / "result.json").read_bytes())
    except (OSError, ValueError) as e:
        return None, f"its result.json cannot be read ({type(e).__name__})"
    if r.schema_version != SCHEMA_VERSION:
        return None, f"result schema version {r.schema_version}, not {SCHEMA_VERSION}"
    now = ModelSummary(**model_summary(model))
    frame_pass = ("precision", "graph", "graph_sha256")
    if now.created is None or r.model_info.model_copy(update=dict.fromkeys(("runtime", *frame_pass))) != now:
        # any runtime will do (the same results up to rounding); the graph and precision are compared below
        return None, "another model" if now.created else "the model was never saved (no creation time to compare)"
    want = frame_pass_of(read_graph_file(cfg.graph, model) if cfg.graph is not None else None,
                         runtime_precision(cfg.runtime))
    made = r.model_info.model_dump(include=set(frame_pass))
    made["precision"] = made["precision"] or "fp32"  # written before pocovid recorded it: fp32, no graph file
    if (made["precision"], made["graph_sha256"]) != (want["precision"], want["graph_sha256"]):  # not the name
        then, now_ = _frame_pass_text(made), _frame_pass_text(want)
        return None, f"made with {then}, not {now_}" if then != now_ else f"made with another {then} (another file)"
    if _settings_of(r) != _settings_wanted(cfg, r):
        return None, "other settings"
    if record.get("settings", _unrecorded_settings(cfg)) != _unrecorded_settings(cfg):  # none: written before
        changed = [k for k, v in _unrecorded_settings(cfg).items() if record["settings"].get(k) != v]
        return None, f"other settings ({', '.join(changed)})"
    missing = [n for n in r.artifacts() if not (folder / n).is_file()]
    if missing:
        return None, f"output missing ({', '.join(missing)})"
    return r, ""


def _frame_pass_text(fp: dict) -> str:
    return f"the {fp['precision']} graph {fp['graph']}" if fp["graph"] else f"{fp['precision']} without --graph"


# ------------------------------------------------------------------------------ the batch

Outcome = tuple  # ("ok", AnalysisResult, tmp folder) or ("failed", reason)


def _run_local(todo, model, out_dir: Path, cfg: AnalysisConfig, report: Callable[[BatchProgress], None], n: int):
    """The plain loop: (index, outcome) per recording, in order."""
    for i, p in todo:
        report(BatchProgress(i, n, str(p), "start"))
        tmp = Path(tempfile.mkdtemp(prefix=".pocovid-", dir=out_dir))
        def step(fraction: float, stage: str, i=i, p=p) -> None:
            if stage != "done":  # the batch says "done" once the recording is in place
                report(BatchProgress(i, n, str(p), stage, fraction))

        try:
            r = analyze_recording(p, model, tmp, cfg, progress=step)
        except Exception as e:  # one bad file never stops the batch
            shutil.rmtree(tmp, ignore_errors=True)  # made above, by us
            yield i, ("failed", failure_reason(p, e))
            continue
        yield i, ("ok", r, tmp)


def analyze_files(paths, model, out_dir: str | os.PathLike, config: AnalysisConfig | None = None,
                  progress: Callable[[int, int, str], None] | None = None, *, resume: bool = False,
                  engine: str = "local", address: str | None = None, workers: int | None = None,
                  events: Callable[[BatchProgress], None] | None = None) -> BatchResult:
    """Analyse many recordings: each gets its own folder `out_dir/<file stem>` (`scan`, `scan-2`
    when the name is taken; an earlier analysis's folder is replaced, anything else is never
    touched), and `out_dir/summary.csv` lists them all. Each analysis is written into a fresh
    hidden folder and renamed into place when it succeeded (in input order, whatever the engine),
    so a failure leaves nothing behind. A file that fails is listed (file and reason, one line)
    and the rest are done.

    resume: a recording whose finished result is in `out_dir` (`finished_result`: same schema
    version, model, settings, outputs all there) is not analysed again; its entry is `skipped`,
    and no finished result is replaced (a new folder gets the next free name).
    engine: "local" (this process, one recording after another) or "ray" (one Ray task per
    recording, `pocovid.analysis.ray_engine`; `address` of a cluster, else a local Ray on `workers`
    CPUs, default all). `progress(i, n, file)` is called as recording i of n starts (or is skipped)
    and `(n, n, "")` at the end; `events(BatchProgress)` with every step (frame batches included)."""
    cfg = config or AnalysisConfig()
    cfg.check()
    if engine not in ENGINES:
        raise PocovidError(f"unknown engine {engine!r} (use {' or '.join(ENGINES)})")
    if workers is not None and workers < 1:
        raise PocovidError(f"workers must be >= 1, got {workers}")
    def report(ev: BatchProgress) -> None:
        if events:
            events(ev)
        if progress and ev.stage in ("start", "skipped"):
            progress(ev.i, ev.n, ev.file)

    # loaded once for the whole batch (torch-free from a cached graph when `cfg` allows; Ray ships it)
    model, _ = resolve_model(model, cfg)
    if cfg.graph is not None:  # not this model's (or unreadable): one error, before any recording
        read_graph_file(cfg.graph, model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in paths]
    plan = _plan(paths, model, out_dir, cfg, resume, report)
    if engine == "ray" and plan.todo:
        from pocovid.analysis.ray_engine import analyze_with_ray

        outcomes = analyze_with_ray(plan.todo, model, out_dir, cfg, report, len(paths), address=address,
                                    workers=workers)
    else:
        outcomes = _run_local(plan.todo, model, out_dir, cfg, report, len(paths))
    entries = plan.entries
    waiting: dict[int, Outcome] = {}
    order = iter([i for i, _ in plan.todo] + [None])
    nxt = next(order)
    for i, outcome in outcomes:  # placed in input order, so folder names never depend on timing
        waiting[i] = outcome
        failed = outcome[0] == "failed"
        report(BatchProgress(i, len(paths), str(paths[i]), "failed" if failed else "done", 1.0,
                             outcome[1] if failed else ""))
        while nxt is not None and nxt in waiting:
            entries[nxt] = _entry(nxt, paths[nxt], waiting.pop(nxt), plan, out_dir)
            nxt = next(order)
    batch = BatchResult([e for e in entries if e is not None])
    batch.summary = write_summary(out_dir / "summary.csv", batch)
    if progress:
        progress(len(paths), len(paths), "")
    return batch


@dataclass
class _Plan:
    entries: list[BatchEntry | None]  # the skipped ones filled in
    todo: list[tuple[int, Path]]  # (index, path) to analyse
    sources: list[dict | None]  # `source_record` of every path, read before any analysis
    taken: set[str]  # folder names not to be replaced
    own: dict[int, str]  # index -> the recording's own outdated folder (replaced in place)
    settings: dict  # `_unrecorded_settings` of this batch, written beside each result


def _plan(paths: list[Path], model, out_dir: Path, cfg: AnalysisConfig, resume: bool, report) -> _Plan:
    """What to analyse; with `resume`, finished results are skipped (reported as such), outdated
    ones are redone into their own folder, and no other earlier result is replaced."""
    n = len(paths)
    earlier = earlier_analyses(out_dir) if resume else {}
    plan = _Plan([None] * n, [], [source_record(p) for p in paths],
                 {d.name for d in out_dir.iterdir() if _is_ours(d)} if resume else set(), {},
                 _unrecorded_settings(cfg))
    for i, p in enumerate(paths):
        folder, record = earlier.get((plan.sources[i] or {}).get("path_sha256"), (None, None))
        r, why = finished_result(folder, record, plan.sources[i], model, cfg) if folder else (None, "")
        if r is not None:
            plan.entries[i] = BatchEntry(str(p), r, folder, skipped=True)
            report(BatchProgress(i, n, str(p), "skipped", 1.0, str(folder)))
            continue
        if folder:
            plan.own[i] = folder.name
            report(BatchProgress(i, n, str(p), "redo", 0.0, why))
        plan.todo.append((i, p))
    return plan


def _entry(i: int, p: Path, outcome: Outcome, plan: _Plan, out_dir: Path) -> BatchEntry:
    if outcome[0] == "failed":
        return BatchEntry(str(p), FailedAnalysis(file=path_text(p), reason=outcome[1]))
    _, r, tmp = outcome
    if plan.sources[i] is not None:  # read before the analysis: a recording changed meanwhile is redone
        write_text(tmp / SOURCE_RECORD, json.dumps(plan.sources[i] | {"settings": plan.settings}))
    return BatchEntry(str(p), r, _place(tmp, out_dir, _safe_name(p.stem), plan.taken, plan.own.get(i)))


def _row(e: BatchEntry) -> dict:
    r = e.result
    if not e.ok:
        return {"file": e.file, "status": "failed", "skipped": False, "error": r.reason}
    p = r.prediction
    withheld = bool(p.withheld or r.out_of_distribution)
    row = {"file": e.file, "folder": e.folder.name if e.folder else "", "status": "withheld" if withheld else "ok",
           "skipped": e.skipped,
           # a withheld result has no diagnosis: no label and no probabilities in the table either
           # (as the API's null diagnosis); result.json keeps them for transparency
           "label": "" if withheld else p.label, "withheld": withheld,
           "entropy": r.uncertainty.components.get("entropy", ""),
           "member_std": r.uncertainty.components.get("member_std", ""),
           "review_recommended": r.review_recommended, "out_of_distribution": r.out_of_distribution,
           "frames_disagree": p.frames_disagree, "n_frames": r.sampling.n_frames_analyzed}
    return row | {f"p_{c}": "" if withheld else v for c, v in p.probabilities.items()}


def write_summary(path: Path, batch: BatchResult) -> Path:
    """`summary.csv`, written atomically: one row per file. File names (and errors naming them) are
    written with `pocovid.files.path_text`: bytes that are not UTF-8 as `\\xNN`, as in `data index`."""
    rows = [_row(e) for e in batch.entries]
    pcols = sorted({k for r in rows for k in r if k.startswith("p_")})
    at = SUMMARY_COLUMNS.index("probabilities")
    cols = SUMMARY_COLUMNS[:at] + pcols + SUMMARY_COLUMNS[at + 1:]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        cells = {c: r.get(c, "") for c in cols}
        w.writerow({c: path_text(v) if isinstance(v, str) else v for c, v in cells.items()})
    return write_text(path, buf.getvalue())
