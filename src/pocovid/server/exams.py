"""Exams in the service: a patient's recordings (BLUE points) analysed together, as `pocovid exam` does.

Each recording of an exam is an analysis like any other (a row of `analyses` with its `exam` and
`zone`, run by the job runner in its memory-capped child process); its artifacts live in the exam's
folder (`DATA/exams/<exam>/<recording>/`). When the last recording of an exam is done or failed,
`ExamService.conclude` draws the exam from the recordings' stored results with the bedside exam's
own pieces (`pocovid.analysis.bedside.exam_clip` and `conclude_exam`: zones, LUS score, verdict,
review) and writes `exam.json` and `exam.html` into the exam's folder, then stores the `ExamResult`.

* A change (recordings added, a zone moved) raises the exam's `revision` and makes it `running`
  again; a conclusion drawn from an older revision is not recorded (`Database.conclude_exam`), so a
  change that lands while a conclusion is drawn is never lost. Conclusions are drawn one at a time.
* A recording that failed is listed in `failures` (its one-line reason, named by its stored name);
  withheld recordings (out of distribution) count toward nothing, as in `pocovid exam`.
* The verdict needs the model's classes and exam method: the model is loaded in this process (as
  GET /api/model does) the first time an exam is concluded. A conclusion that cannot be drawn fails
  the exam with a one-line reason; the server goes on.
* On start (`recover`), exams left `running` whose recordings are all finished (a stop between the
  last recording and the conclusion, or recordings failed as interrupted) are concluded.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from pathlib import Path

from pocovid.analysis.bedside import ExamConfig, conclude_exam, exam_clip
from pocovid.analysis.exam_report import write_exam_html
from pocovid.analysis.exam_result import ExamResult
from pocovid.analysis.zones import ZoneOf
from pocovid.errors import PocovidError
from pocovid.files import write_text
from pocovid.server.db import FINISHED, Database
from pocovid.server.results import stored_result
from pocovid.server.storage import Storage

log = logging.getLogger("pocovid.server")

#: The protocols an exam may follow (BLUE: six points, R1..R3 and L1..L3).
PROTOCOLS = ("BLUE",)
#: Recordings one exam may hold (several per zone are fine).
MAX_RECORDINGS = 24
EXAM_JSON, EXAM_HTML = "exam.json", "exam.html"


def exam_clips(clips: list[dict]) -> list:
    """Each recording row as the bedside exam sees it (`exam_clip`): named by its stored name, its
    folder its id (relative to the exam's folder); a failed one by its one-line reason."""
    out = []
    for c in clips:
        zone = ZoneOf(Path(Path(c["upload"]).name), c["zone"], c["zone_source"] if c["zone"] else None)
        if c["status"] == "done":
            result, note = stored_result(c["result"])
            out.append(exam_clip(zone, result if result is not None else note or "no stored result", c["id"]))
        else:
            out.append(exam_clip(zone, c["error"] or "the analysis failed"))
    return out


class ExamService:
    """Draws exams' conclusions (see the module docstring). `models`: the job runner's `ModelProvider`."""

    def __init__(self, db: Database, storage: Storage, models, config: ExamConfig | None = None):
        self.db = db
        self.storage = storage
        self.models = models
        self.config = config or ExamConfig(report=True)
        self._lock = threading.Lock()

    def recording_finished(self, analysis_id: str) -> None:
        """`JobRunner.on_finished`: conclude the recording's exam once all its recordings are finished."""
        row = self.db.get_analysis(analysis_id)
        if row is not None and row.get("exam"):
            self.conclude(row["exam"])

    def recover(self) -> int:
        """Conclude the exams left running whose recordings are all finished; returns how many."""
        return sum(self.conclude(e["id"]) for e in self.db.exams_with_status("running"))

    def conclude(self, exam_id: str) -> bool:
        """Draw and record the exam's conclusion when every recording is done or failed; False when
        it is not due (recordings still running, none yet, already concluded) or changed meanwhile."""
        with self._lock:
            exam = self.db.get_exam(exam_id)
            if exam is None or exam["status"] != "running":
                return False
            clips = self.db.exam_recordings(exam_id)
            if not clips or any(c["status"] not in FINISHED for c in clips):
                return False
            t0 = time.perf_counter()
            try:
                result = self._draw(exam, clips)
            except PocovidError as e:
                reason = f"the exam could not be concluded: {e}"
                log.warning("exam %s: %s", exam_id, reason)
                return self.db.conclude_exam(exam_id, exam["revision"], status="failed", error=reason[:500])
            except Exception as e:  # a bug fails the exam with a reason, never the worker or the server
                log.error("exam %s: internal error %s\n%s", exam_id, type(e).__name__,
                          "".join(traceback.format_tb(e.__traceback__)))
                return self.db.conclude_exam(exam_id, exam["revision"], status="failed",
                                             error=f"internal error while concluding the exam ({type(e).__name__}); "
                                                   "see the server log")
            done = self.db.conclude_exam(exam_id, exam["revision"], status="done", result=result.to_json(),
                                         model=self.models.name, error=None)
            log.info("exam %s: %s in %.2f s (%d recordings)", exam_id, "concluded" if done else "changed meanwhile",
                     time.perf_counter() - t0, len(clips))
            return done

    def _draw(self, exam: dict, clips: list[dict]) -> ExamResult:
        """The exam from its recordings' stored results; writes exam.html and exam.json in its folder."""
        t0 = time.perf_counter()
        model = self.models.get()
        result = conclude_exam(exam_clips(clips), model, self.models.name, self.config, patient=exam["patient"])
        folder = self.storage.exam_dir(exam["id"])
        folder.mkdir(parents=True, exist_ok=True)
        if self.config.report:
            result.report = EXAM_HTML
            write_exam_html(folder / EXAM_HTML, result)
        result.timings = {"conclude_s": round(time.perf_counter() - t0, 3)}
        write_text(folder / EXAM_JSON, result.model_dump_json(indent=2))
        return result


def exam_file_names(exam: dict, clips: list[dict], folder: Path) -> list[str]:
    """The names served under /api/exams/{id}/files/: exam.html and exam.json once concluded, and each
    finished recording's artifacts as `<recording id>/<name>` (the names its own `files` lists)."""
    names = []
    if exam["status"] == "done":
        names += [n for n in (EXAM_HTML, EXAM_JSON) if os.path.isfile(folder / n)]
    for c in clips:
        if c["status"] == "done":
            names += [f"{c['id']}/{f}" for f in c["files"]]
    return names
