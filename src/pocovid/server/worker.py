"""One analysis at a time in a child process, so that an analysis that runs out of memory (a
decompression or frame-count bomb) or crashes takes down that child only, never the server.

    w = ProcessWorker(analyze, "default", memory_mb=3072)
    data = w.run(upload, out_dir, config, progress=cb, should_stop=lambda: False)   # result.to_json()
    w.close()

* The child is started with `spawn` (no copy of the server's threads or locks), loads the model
  once and serves jobs one by one over a pipe; it is started again after it dies or is stopped.
* Its data segment is limited (`RLIMIT_DATA`, `memory_mb`): an allocation past the limit raises
  MemoryError there and the job fails with "out of memory"; if the child dies anyway (a signal,
  the kernel's OOM killer) the job fails with its exit status.
* The analysis sees the recording's stored name only (the child works in the uploads folder), so
  nothing it writes (result, report) carries the server's paths.
* `should_stop()` (shutdown, deletion) or a progress callback raising `JobInterrupted` kills the
  child at once; the child also exits when the server process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("pocovid.server")


class JobInterrupted(BaseException):
    """Raised from the progress callback to stop an analysis (shutdown, deletion). A
    BaseException, so that an analysis which catches `Exception` still lets it through."""


class AnalysisFailed(Exception):
    """An analysis failed for a reason already worded for the user (one line)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def failure_reason(e: BaseException, memory_mb: float = 0) -> str | None:
    """The user's one-line reason for a failure that is not a bug: out of memory, disk full."""
    if isinstance(e, MemoryError):
        limit = f" (the server allows {memory_mb:.0f} MB per analysis)" if memory_mb else ""
        return f"out of memory: the recording needs more memory to analyse than is available{limit}"
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the server's disk is full (no space left on device): the analysis could not write its results"
    return None


def limit_memory(memory_mb: float) -> None:
    """Cap this process' data segment (heap and anonymous mappings) at `memory_mb` (0: no cap)."""
    if not memory_mb:
        return
    import resource

    n = int(memory_mb * 1024 * 1024)
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        n = min(n, hard)
    if soft == resource.RLIM_INFINITY or soft > n:
        resource.setrlimit(resource.RLIMIT_DATA, (n, hard))


def _exit_with_parent(parent_pid: int) -> None:
    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="pocovid-parent-watch", daemon=True).start()


def _child_main(conn, analyze: Callable, spec: str, model: Any, loader: Callable | None, runtime: str,
                memory_mb: float, parent_pid: int) -> None:
    """The child's loop: ('run', name, folder, out_dir, config) -> ('progress', f, stage)* then
    ('done', result JSON) or ('error', 'pocovid' | 'failed', reason); ('stop',) ends it."""
    from pocovid.analysis.result import AnalysisResult
    from pocovid.errors import PocovidError
    from pocovid.server.jobs import ModelProvider

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server decides
    _exit_with_parent(parent_pid)
    limit_memory(memory_mb)
    models = ModelProvider(spec, model=model, loader=loader, runtime=runtime)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] != "run":
            return
        _, name, folder, out_dir, config = msg

        def progress(fraction=None, stage=None, *args, **kwargs):
            conn.send(("progress", fraction, None if stage is None else str(stage)[:200]))

        try:
            os.chdir(folder)
            progress(None, "loading the model")
            result = analyze(Path(name), models.get(), Path(out_dir), config=config, progress=progress)
            if not isinstance(result, AnalysisResult):
                raise TypeError(f"the analysis returned {type(result).__name__}, not an AnalysisResult")
            reply = ("done", result.to_json())
        except PocovidError as e:
            reply = ("error", "pocovid", getattr(e, "reason", None) or str(e))
        except Exception as e:
            reason = failure_reason(e, memory_mb)
            if reason is None:
                log.error("analysis process: internal error %s\n%s", type(e).__name__,
                          "".join(traceback.format_tb(e.__traceback__)))
                reason = f"internal error during the analysis ({type(e).__name__}); see the server log"
            reply = ("error", "failed", reason)
        try:
            conn.send(reply)
        except MemoryError:
            conn.send(("error", "failed", failure_reason(MemoryError(), memory_mb)))


class ProcessWorker:
    """A child process that runs analyses one at a time (see the module docstring)."""

    def __init__(self, analyze: Callable, spec: str = "default", *, model: Any = None,
                 loader: Callable | None = None, runtime: str = "auto", memory_mb: float = 0):
        self.analyze = analyze
        self.spec = spec
        self.runtime = runtime
        self.model = model
        self.loader = loader
        self.memory_mb = memory_mb
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child_main, name="pocovid-analysis", daemon=True,
                           args=(child, self.analyze, self.spec, self.model, self.loader, self.runtime, self.memory_mb,
                                 os.getpid()))
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        log.debug("analysis process %d started", proc.pid)

    def kill(self) -> None:
        """Stop the child now (it is started again for the next job)."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.kill()
            proc.join(5)
            with contextlib.suppress(Exception):
                proc.close()
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

    close = kill

    def _died(self) -> AnalysisFailed:
        code = None
        if self._proc is not None:
            self._proc.join(5)  # the pipe may close before the process is reaped
            code = self._proc.exitcode
        self.kill()
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"was killed ({name}{'; out of memory?' if -code == signal.SIGKILL else ''})"
        else:
            how = f"ended unexpectedly (exit code {code})"
        return AnalysisFailed(f"the analysis process {how}; the recording may be too large or malformed")

    def run(self, upload: Path, out_dir: Path, config: Any, *, progress: Callable,
            should_stop: Callable[[], bool]) -> dict:
        """Analyse `upload` into `out_dir` in the child; returns the result's JSON. Raises
        `PocovidError` (the reader's reason), `AnalysisFailed` or `JobInterrupted`."""
        from pocovid.errors import PocovidError

        if self._proc is None or not self._proc.is_alive():
            self.kill()
            self._start()
        try:
            self._conn.send(("run", upload.name, str(upload.parent), str(out_dir), config))
        except (OSError, EOFError):
            raise self._died() from None
        while True:
            if should_stop():
                self.kill()
                raise JobInterrupted()
            try:
                ready = self._conn.poll(0.1)
                msg = self._conn.recv() if ready else None
            except (OSError, EOFError):
                raise self._died() from None
            if msg is None:
                if not self._proc.is_alive():
                    raise self._died()
                continue
            if msg[0] == "progress":
                try:
                    progress(msg[1], msg[2])
                except JobInterrupted:
                    self.kill()
                    raise
            elif msg[0] == "done":
                return msg[1]
            elif msg[1] == "pocovid":
                raise PocovidError(msg[2])
            else:
                raise AnalysisFailed(msg[2])
