"""Analyses run in a bounded pool of worker threads, off the request path.

* The real analysis runs in a child process per worker thread (`worker.ProcessWorker`, its memory
  capped at `ServerConfig.job_memory_mb`): a recording that exhausts memory or crashes the
  analysis fails its own job ("out of memory", "the analysis process was killed ..."), and the
  server goes on answering. The child loads the model once. An analysis injected by a caller
  (tests) runs in the worker thread instead, with a copy of the model per thread (explanations
  hook into the model's layers, so two threads must not share one).
* A job is claimed in SQLite (queued -> running, attempts + 1) before it runs, so a job is never
  run twice at once, and its progress (fraction, stage) is written back as it goes (throttled,
  best effort while the database is busy).
* On start (`JobRunner.start`) jobs found `running` were cut off by a crash or kill (perhaps
  caused by that very job): they are queued again until they have been started `max_attempts`
  times (default 1: never), then marked failed with the reason; `queued` jobs are submitted
  again in upload order. Nothing is silently lost, and a recording that took the server down
  does not do it again.
* On a clean stop (`shutdown`) running jobs are interrupted (an analysis process is killed at
  once) and put back in the queue (the attempt is not counted); queued ones stay queued.
* A failure is recorded with a one-line reason: the reader's reason for a recording it cannot
  decode (`PocovidError`), "out of memory", "the server's disk is full", or the exception's type
  for anything unexpected; an outcome the database refuses (locked) is retried. The log gets ids,
  statuses, times and tracebacks only, never file names or DICOM values.
* A recording of an exam is a job like any other; its artifacts go to the exam's folder
  (`Storage.analysis_dir(id, exam)`), and `on_finished(id)` is called after each job (the exam
  service draws the exam's conclusion once its last recording is done or failed).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import sqlite3
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from pocovid.analysis.result import AnalysisResult
from pocovid.errors import PocovidError
from html import escape

from pocovid.files import jsonable, write_json, write_text
from pocovid.models import model_summary
from pocovid.server.db import Database
from pocovid.server.results import RESULT_JSON, artifact_names, is_plain_name
from pocovid.server.storage import Storage
from pocovid.server.worker import AnalysisFailed, JobInterrupted, ProcessWorker, failure_reason

__all__ = ["JobInterrupted", "JobRunner", "ModelProvider", "artifact_names", "default_analysis_config",
           "real_analyze"]

log = logging.getLogger("pocovid.server")


class ModelProvider:
    """The model, loaded once from `spec` ('default' or a file) or given ready; a copy per thread."""

    def __init__(self, spec: str = "default", model: Any = None, loader: Callable[[str], Any] | None = None,
                 runtime: str = "auto"):
        self.spec = spec
        self.runtime = runtime  # the frame pass's runtime: a graph runtime's model needs no PyTorch
        self._model = model
        self.given = model  # the model given ready (not one loaded here): what an analysis process gets
        self.loader = loader
        self._lock = threading.Lock()
        self._local = threading.local()
        self._error: str | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def error(self) -> str | None:
        return self._error

    def get(self):
        """The shared model (loads it on first call); raises PocovidError when it cannot be loaded."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    try:
                        if self.loader is not None:
                            m = self.loader(self.spec)
                        else:  # the service analyses with CAM: on a graph runtime a cached graph needs no PyTorch
                            from pocovid.inference import load_for_runtime

                            m = load_for_runtime(self.spec, self.runtime)
                    except PocovidError as e:
                        self._error = str(e)
                        raise
                    m.eval()
                    meta = getattr(m, "meta", None)
                    if isinstance(meta, dict):  # the name the analysis writes into its result
                        meta.setdefault("source", self.name)
                    self._model = m
                    self._error = None
                    log.info("model loaded: %s", getattr(m, "meta", {}).get("backbone", type(m).__name__))
        return self._model

    def for_this_thread(self):
        """The model for the calling worker thread: its own copy of the loaded model, made once
        per thread from the loaded one, which itself never runs (so no hook or state of one
        analysis can reach another)."""
        m = getattr(self._local, "model", None)
        if m is None:
            base = self.get()
            with self._lock:
                m = copy.deepcopy(base)
            self._local.model = m
        return m

    @property
    def name(self) -> str:
        """'default' or the model file's name (never a full path)."""
        return self.spec if str(self.spec) == "default" else Path(str(self.spec)).name

    def info(self) -> dict:
        """`ModelInfo`: `pocovid.models.model_summary` (what results say about the model) plus the
        server's name for it and the file's training config and cross-validation figures."""
        m = self.get()
        s = model_summary(m)
        meta = getattr(m, "meta", None) or {}
        return {"name": self.name, "backbone": s["backbone"], "classes": s["classes"], "n_heads": s["n_heads"],
                "input_size": s["input_size"], "version": s["pocovid_version"], "format_version": s["format_version"],
                "created": s["created"], "data_fingerprint": s["data_fingerprint"],
                "training_config": jsonable(meta.get("training_config") or {}),
                "metrics": jsonable(meta.get("metrics"))}


def default_analysis_config(overlay_video: bool = True, runtime: str = "auto"):
    """`pocovid.analysis.AnalysisConfig(overlay_video=..., runtime=...)`; None while that module is missing."""
    try:
        from pocovid.analysis import AnalysisConfig
    except ImportError:
        return None
    try:
        return AnalysisConfig(overlay_video=overlay_video, runtime=runtime)
    except TypeError:
        return AnalysisConfig()


def real_analyze(*args, **kwargs):
    """`pocovid.analysis.analyze_recording`, imported when first needed."""
    try:
        from pocovid.analysis import analyze_recording
    except ImportError as e:
        raise PocovidError(f"the analysis module is not available in this installation ({e})") from None
    return analyze_recording(*args, **kwargs)


class JobRunner:
    """Runs queued analyses with `analyze(path, model, out_dir, config=..., progress=...)`, which
    returns an `AnalysisResult` (anything else fails the job as an internal error). With `isolate`,
    each worker thread runs its analyses in its own child process (`worker.ProcessWorker`, memory
    limited to `memory_mb`); without, in the worker thread itself (tests inject a stub this way)."""

    def __init__(self, db: Database, storage: Storage, models: ModelProvider, *, analyze: Callable = real_analyze,
                 workers: int = 1, config_factory: Callable[[], Any] = default_analysis_config,
                 max_attempts: int = 1, isolate: bool = False, memory_mb: float = 0,
                 on_finished: Callable[[str], None] | None = None):
        self.db = db
        self.storage = storage
        self.models = models
        self.analyze = analyze
        self.workers = workers
        self.config_factory = config_factory
        self.max_attempts = max(1, int(max_attempts))
        self.isolate = isolate
        self.memory_mb = memory_mb
        self.on_finished = on_finished
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = threading.Event()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._idle: list[ProcessWorker] = []
        self._all: list[ProcessWorker] = []

    # ---------------------------------------------------------------------------- lifecycle
    def start(self) -> dict:
        """Recover jobs cut off by a stop, then submit every queued job. Returns what it did."""
        self._stopping.clear()
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="pocovid-worker")
        requeued = failed = 0
        for row in self.db.analyses_with_status("running"):
            if row["attempts"] >= self.max_attempts:
                self.db.update_analysis(row["id"], status="failed", finished=time.time(), stage="interrupted",
                                        error=f"interrupted: the server stopped during this analysis "
                                              f"{row['attempts']} time(s) (a crash, a kill, or the analysis itself "
                                              "ran out of memory); not tried again (upload it again to retry)")
                failed += 1
                log.warning("analysis %s: cut off %d time(s) by a stop, marked failed", row["id"], row["attempts"])
            else:
                self.db.update_analysis(row["id"], status="queued", progress=0.0,
                                        stage="queued again after a server restart")
                requeued += 1
                log.warning("analysis %s: cut off by a stop, queued again", row["id"])
        queued = self.db.analyses_with_status("queued")
        for row in queued:
            self.submit(row["id"])
        return {"requeued": requeued, "failed": failed, "submitted": len(queued)}

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs; interrupt running ones (an analysis process at once, one in a thread at
        its next progress report): they go back to the queue for the next start; with `wait`, wait
        for the threads to finish."""
        self._stopping.set()
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
        with self._lock:
            workers, self._all, self._idle = self._all, [], []
        for w in workers:
            w.close()

    def submit(self, id_: str) -> None:
        if self._pool is None or self._stopping.is_set():
            return  # stays queued in the database; the next start submits it
        self._pool.submit(self._run, id_)

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Run `fn` in the worker pool, after the jobs submitted before it have started (a failure is
        logged). Nothing happens while the runner is stopped."""
        def run():
            try:
                fn()
            except Exception:
                log.exception("a task in the worker pool failed")

        if self._pool is not None and not self._stopping.is_set():
            self._pool.submit(run)

    def cancel(self, id_: str) -> None:
        """Ask a running job to stop (its row has been deleted)."""
        with self._lock:
            if id_ in self._running:
                self._cancelled.add(id_)

    @property
    def n_running(self) -> int:
        with self._lock:
            return len(self._running)

    # ---------------------------------------------------------------------------- one job
    def _run(self, id_: str) -> None:
        try:
            self._run_job(id_)
        except BaseException:  # the pool would swallow it: a job must never stay 'running' unseen
            log.exception("analysis %s: the worker failed", id_)
        if self.on_finished is not None and not self._stopping.is_set():
            try:
                self.on_finished(id_)
            except Exception:  # e.g. an exam's conclusion: logged, never the worker's end
                log.exception("analysis %s: what follows its end failed", id_)

    def _claim(self, id_: str) -> dict | None:
        """queued -> running, waiting out a database locked by another process."""
        delay = 0.2
        while not self._stopping.is_set():
            try:
                return self.db.claim_analysis(id_)
            except sqlite3.OperationalError as e:
                log.warning("analysis %s: cannot start yet, the database is busy (%s)", id_, e)
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)
        return None

    def _record(self, id_: str, **fields) -> bool:
        """Write a job's outcome, retrying while the database is busy; logs when it cannot (the job
        is then found 'running' on the next start and failed there)."""
        for delay in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0):
            time.sleep(delay)
            try:
                return self.db.update_analysis(id_, **fields)
            except sqlite3.Error as e:
                err = e
        log.error("analysis %s: cannot record its outcome (%s): %s", id_, fields.get("status"), err)
        return False

    def _run_job(self, id_: str) -> None:
        if self._stopping.is_set():
            return
        row = self._claim(id_)
        if row is None:
            return  # deleted or taken meanwhile
        with self._lock:
            self._running.add(id_)
        t0 = time.time()
        log.info("analysis %s: running (attempt %d, %s, %d bytes)", id_, row["attempts"], row["kind"], row["size"])
        out_dir = self.storage.analysis_dir(id_, row.get("exam"))
        try:
            upload = self.storage.resolve(row["upload"])
            if not upload.is_file():
                raise PocovidError(f"{upload}: the stored recording is missing")
            shutil.rmtree(out_dir, ignore_errors=True)  # a re-run starts clean
            out_dir.mkdir(parents=True)
            result = self._analyse(id_, upload, out_dir)
            # the stored name (a random id), never a server path
            result = result.model_copy(update={"file": upload.name})
            data = result.to_json()
            write_json(out_dir / RESULT_JSON, data)
            files = artifact_names(result, out_dir)
            if self._record(id_, status="done", progress=1.0, stage="done", result=data, files=files,
                            finished=time.time(), error=None, model=self.models.name):
                log.info("analysis %s: done in %.1f s (%d files)", id_, time.time() - t0, len(files))
        except JobInterrupted:
            if id_ in self._cancelled:
                log.info("analysis %s: stopped (deleted)", id_)
            else:
                self._record(id_, status="queued", progress=0.0, attempts=max(0, row["attempts"] - 1),
                             stage="queued again (the server stopped)")
                log.info("analysis %s: interrupted by shutdown, back in the queue", id_)
        except PocovidError as e:
            self._fail(id_, self._reason(e, row), t0, e)
        except AnalysisFailed as e:
            self._fail(id_, e.reason, t0, e)
        except Exception as e:  # a bug must fail the job with a reason, not kill the worker
            reason = failure_reason(e, self.memory_mb)
            if reason is None:
                reason = f"internal error during the analysis ({type(e).__name__}); see the server log"
                log.error("analysis %s: internal error %s\n%s", id_, type(e).__name__,
                          "".join(traceback.format_tb(e.__traceback__)))
            else:
                shutil.rmtree(out_dir, ignore_errors=True)  # out of memory or disk: free what it wrote
            self._fail(id_, reason, t0, e)
        finally:
            with self._lock:
                self._running.discard(id_)
                cancelled = id_ in self._cancelled
                self._cancelled.discard(id_)
            if cancelled or self._gone(id_):
                shutil.rmtree(out_dir, ignore_errors=True)  # deleted while it ran

    def _gone(self, id_: str) -> bool:
        try:
            return self.db.get_analysis(id_) is None
        except sqlite3.Error:
            return False

    def _fail(self, id_: str, reason: str, t0: float, e: BaseException) -> None:
        self._record(id_, status="failed", stage="failed", error=reason, finished=time.time())
        log.info("analysis %s: failed after %.1f s (%s)", id_, time.time() - t0, type(e).__name__)

    def _analyse(self, id_: str, upload: Path, out_dir: Path) -> AnalysisResult:
        """Run the analysis (in a child process with `isolate`, else here) and check its result."""
        config = self.config_factory()
        progress = self._progress_cb(id_)
        if not self.isolate:
            progress(None, "loading the model")
            result = self.analyze(upload, self.models.for_this_thread(), out_dir, config=config, progress=progress)
            if not isinstance(result, AnalysisResult):
                raise TypeError(f"the analysis returned {type(result).__name__}, not an AnalysisResult")
            return _without_paths(result, upload, out_dir)
        worker = self._take_worker()
        try:
            data = worker.run(upload, out_dir, config, progress=progress,
                              should_stop=lambda: self._stopping.is_set() or id_ in self._cancelled)
        finally:
            self._give_back(worker)
        return AnalysisResult.model_validate(data)

    def _take_worker(self) -> ProcessWorker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            w = ProcessWorker(self.analyze, self.models.spec, model=self.models.given, loader=self.models.loader,
                              runtime=self.models.runtime, memory_mb=self.memory_mb)
            self._all.append(w)
            return w

    def _give_back(self, w: ProcessWorker) -> None:
        with self._lock:
            if w in self._all:
                self._idle.append(w)
                return
        w.close()  # shut down meanwhile

    def _reason(self, e: PocovidError, row: dict) -> str:
        reason = getattr(e, "reason", None) or str(e)
        for p in sorted({str(self.storage.resolve(row["upload"])), row["upload"]}, key=len, reverse=True):
            reason = reason.replace(p + ": ", "").replace(p, "the recording")
        name = Path(row["upload"]).name
        if reason.startswith(name + ": "):
            reason = reason[len(name) + 2:]
        reason = reason.replace(str(self.storage.root), "the data folder")
        reason = " ".join(reason.split())
        return reason[:500] or type(e).__name__

    def _progress_cb(self, id_: str):
        state = {"t": 0.0, "stage": None, "p": -1.0}

        def progress(fraction=None, stage=None, *args, **kwargs):
            if self._stopping.is_set() or id_ in self._cancelled:
                raise JobInterrupted()
            now = time.time()
            try:
                f = min(max(float(fraction), 0.0), 1.0) if fraction is not None else state["p"]
            except (TypeError, ValueError):
                f = state["p"]
            stage_s = str(stage)[:200] if stage is not None else state["stage"]
            if stage_s != state["stage"] or now - state["t"] >= 0.25 or (f >= 1.0 > state["p"]):
                state.update(t=now, stage=stage_s, p=f)
                try:
                    self.db.update_analysis(id_, progress=max(f, 0.0), stage=stage_s or "")
                except sqlite3.Error as e:  # progress is best effort: a busy database must not fail the job
                    log.debug("analysis %s: progress not recorded (%s)", id_, e)

        return progress


def _without_paths(result: AnalysisResult, upload: Path, out_dir: Path) -> AnalysisResult:
    """The result and its report with the recording's server path replaced by its stored name (an
    analysis run in this process was given the full path; one in a child process sees the name only)."""
    full, name = str(upload), upload.name
    text = json.dumps(result.to_json())
    if full in text:
        result = AnalysisResult.model_validate(json.loads(text.replace(json.dumps(full)[1:-1], name)))
    report = out_dir / result.report if result.report and is_plain_name(result.report) else None
    if report is not None and report.is_file():
        html = report.read_text(encoding="utf-8", errors="replace")
        fixed = html.replace(full, name).replace(escape(full), name)
        if fixed != html:
            write_text(report, fixed)
    return result
