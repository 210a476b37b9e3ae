"""The service's state in one SQLite file: analyses (the job queue and the history), exams (a patient's
recordings analysed together; each recording is an analysis row with its `exam`) and contributions.

One connection per thread (request handlers run in the thread pool, never on the event loop; each
worker thread has its own), WAL journal (readers never wait for a writer; a crash leaves the last
committed state) and a busy timeout: a call that waits longer than `timeout` for a lock another
process holds raises `sqlite3.OperationalError`, which the app answers with 503. Nothing here
holds patient data: no upload file names, no DICOM tag values (uploads are stored under random
ids; see storage.py); an exam's `patient` is what the user typed as its patient reference.

Migrations: `_SCHEMA` is version 1, as first released; `MIGRATIONS[v]` takes a database from version
v - 1 to v, in one transaction, when it is opened (`meta.schema_version` says where it is).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path

from pocovid.files import jsonable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS analyses (
    id          TEXT PRIMARY KEY,
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    progress    REAL NOT NULL DEFAULT 0,
    stage       TEXT NOT NULL DEFAULT '',
    error       TEXT,
    kind        TEXT NOT NULL,          -- video | image | dicom (sniffed)
    format      TEXT NOT NULL,          -- mp4, png, dicom, ... (sniffed)
    size        INTEGER NOT NULL,       -- bytes as stored
    upload      TEXT NOT NULL,          -- path relative to the data folder
    deidentified INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    started     REAL,
    finished    REAL,
    model       TEXT,
    result      TEXT,                   -- JSON: the analysis result (done)
    files       TEXT                    -- JSON: artifact names, relative to the analysis folder
);
CREATE INDEX IF NOT EXISTS analyses_created ON analyses (created);
CREATE INDEX IF NOT EXISTS analyses_status ON analyses (status);
CREATE TABLE IF NOT EXISTS contributions (
    id          TEXT PRIMARY KEY,
    created     REAL NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected')),
    decided     REAL,
    kind        TEXT NOT NULL,          -- video | image (what the file holds)
    format      TEXT NOT NULL,
    ext         TEXT NOT NULL,
    size        INTEGER NOT NULL,
    file        TEXT NOT NULL,          -- path relative to the data folder
    deidentified INTEGER NOT NULL DEFAULT 0,
    burned_in   TEXT,                   -- DICOM BurnedInAnnotation (YES / NO) when given
    diagnosis   TEXT NOT NULL,
    probe       TEXT NOT NULL,
    source      TEXT NOT NULL,
    license     TEXT NOT NULL,
    case_ref    TEXT,
    findings    TEXT NOT NULL,          -- JSON {finding: 0/1/null}
    severity    INTEGER,
    note        TEXT                    -- reviewer's note on accept / reject
);
CREATE INDEX IF NOT EXISTS contributions_created ON contributions (created);
"""

#: version -> the statements that take a database from the version before to it.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (  # exams: a patient's recordings analysed together (BLUE points); each recording an analysis row
        """CREATE TABLE exams (
            id          TEXT PRIMARY KEY,
            created     REAL NOT NULL,
            updated     REAL NOT NULL,
            status      TEXT NOT NULL CHECK (status IN ('open', 'running', 'done', 'failed')),
            revision    INTEGER NOT NULL DEFAULT 0,   -- + 1 whenever its recordings or zones change
            patient     TEXT,                         -- the patient reference given, if any
            protocol    TEXT NOT NULL DEFAULT 'BLUE',
            error       TEXT,
            concluded   REAL,
            model       TEXT,
            result      TEXT                          -- JSON: the ExamResult (done)
        )""",
        "CREATE INDEX exams_created ON exams (created)",
        "ALTER TABLE analyses ADD COLUMN exam TEXT",         # the exam this recording belongs to (null: none)
        "ALTER TABLE analyses ADD COLUMN zone TEXT",         # BLUE point (null: unassigned)
        "ALTER TABLE analyses ADD COLUMN zone_source TEXT",  # name | option
        "CREATE INDEX analyses_exam ON analyses (exam)",
    ),
}
SCHEMA_VERSION = max(MIGRATIONS)

ANALYSIS_COLUMNS = ("id", "created", "updated", "status", "progress", "stage", "error", "kind", "format", "size",
                    "upload", "deidentified", "attempts", "started", "finished", "model", "result", "files", "exam",
                    "zone", "zone_source")
EXAM_COLUMNS = ("id", "created", "updated", "status", "revision", "patient", "protocol", "error", "concluded", "model",
                "result")
FINISHED = ("done", "failed")
CONTRIBUTION_COLUMNS = ("id", "created", "status", "decided", "kind", "format", "ext", "size", "file", "deidentified",
                        "burned_in", "diagnosis", "probe", "source", "license", "case_ref", "findings", "severity",
                        "note")


class Database:
    """Thread-safe access to the state file. Rows come back as plain dicts (JSON columns decoded)."""

    def __init__(self, path: str | Path, timeout: float = 5.0):
        self.path = Path(path)
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._cons: list[sqlite3.Connection] = []
        self._open = False
        self.open()

    def open(self) -> None:
        """Create the tables on first use (again, after `close`: connections are made per thread)."""
        with self._lock:
            if self._open:
                return
            self._open = True
        con = self._con()
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(_SCHEMA)
        con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1')")
        self._migrate(con)

    def _migrate(self, con: sqlite3.Connection) -> None:
        """Apply the migrations past the database's version, each in one transaction (another process
        opening the same file at once waits, then finds it done)."""
        for version in sorted(MIGRATIONS):
            if self.schema_version() >= version:
                continue
            con.execute("BEGIN IMMEDIATE")
            try:
                if self.schema_version() < version:
                    for stmt in MIGRATIONS[version]:
                        con.execute(stmt)
                    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def schema_version(self) -> int:
        row = self._exec("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            cons, self._cons, self._open = self._cons, [], False
            self._local = threading.local()
        for con in cons:
            with contextlib.suppress(sqlite3.Error):
                con.close()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            if not self._open:
                raise sqlite3.ProgrammingError("the database is closed")
            con = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=self.timeout)
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            con.execute("PRAGMA synchronous=NORMAL")
            with self._lock:
                self._cons.append(con)
            self._local.con = con
        return con

    def _exec(self, sql: str, args=()) -> sqlite3.Cursor:
        return self._con().execute(sql, args)

    # ------------------------------------------------------------------------------ analyses

    def add_analysis(self, id_: str, *, kind: str, format: str, size: int, upload: str, deidentified: bool,
                     exam: str | None = None, zone: str | None = None, zone_source: str | None = None) -> dict:
        """Queue an analysis; with `exam`, a recording of that exam (at `zone`, given by `zone_source`),
        and the exam changes (`_exam_changed`) in the same transaction (KeyError when the exam is gone)."""
        now = time.time()
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("INSERT INTO analyses (id, created, updated, status, stage, kind, format, size, upload, "
                        "deidentified, exam, zone, zone_source) "
                        "VALUES (?, ?, ?, 'queued', 'waiting for a worker', ?, ?, ?, ?, ?, ?, ?, ?)",
                        (id_, now, now, kind, format, int(size), upload, int(deidentified), exam, zone, zone_source))
            if exam is not None and not self._exam_changed(exam, "running"):
                raise KeyError(f"no exam {exam}")  # deleted meanwhile: no recording without its exam
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return self.get_analysis(id_)

    def get_analysis(self, id_: str) -> dict | None:
        row = self._exec("SELECT * FROM analyses WHERE id = ?", (id_,)).fetchone()
        return _analysis(row) if row else None

    def list_analyses(self, offset: int = 0, limit: int = 20) -> tuple[int, list[dict]]:
        """The single analyses (not an exam's recordings), newest first."""
        total = self._exec("SELECT COUNT(*) FROM analyses WHERE exam IS NULL").fetchone()[0]
        rows = self._exec("SELECT * FROM analyses WHERE exam IS NULL ORDER BY created DESC, id LIMIT ? OFFSET ?",
                          (int(limit), int(offset))).fetchall()
        return total, [_analysis(r) for r in rows]

    def analyses_with_status(self, *statuses: str) -> list[dict]:
        q = ",".join("?" * len(statuses))
        rows = self._exec(f"SELECT * FROM analyses WHERE status IN ({q}) ORDER BY created, id", statuses).fetchall()
        return [_analysis(r) for r in rows]

    def count_by_status(self) -> dict[str, int]:
        rows = self._exec("SELECT status, COUNT(*) FROM analyses GROUP BY status").fetchall()
        out = {s: 0 for s in ("queued", "running", "done", "failed")}
        out.update({r[0]: r[1] for r in rows})
        return out

    def update_analysis(self, id_: str, **fields) -> bool:
        """Set columns of one analysis; JSON columns take Python objects. False when it is gone."""
        if not fields:
            return True
        bad = set(fields) - set(ANALYSIS_COLUMNS)
        if bad:
            raise KeyError(f"unknown column(s) {sorted(bad)}")
        fields = dict(fields)
        for k in ("result", "files"):
            if k in fields and fields[k] is not None:
                fields[k] = json.dumps(jsonable(fields[k]), allow_nan=False)
        fields["updated"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        cur = self._exec(f"UPDATE analyses SET {cols} WHERE id = ?", (*fields.values(), id_))
        return cur.rowcount > 0

    def claim_analysis(self, id_: str) -> dict | None:
        """queued -> running (attempts + 1); None when it is not queued any more (deleted, taken)."""
        now = time.time()
        row = self._exec(
            "UPDATE analyses SET status = 'running', attempts = attempts + 1, started = ?, updated = ?, "
            "progress = 0, stage = 'starting', error = NULL WHERE id = ? AND status = 'queued' RETURNING *",
            (now, now, id_)).fetchone()
        return _analysis(row) if row else None

    def delete_analysis(self, id_: str) -> dict | None:
        row = self._exec("DELETE FROM analyses WHERE id = ? RETURNING *", (id_,)).fetchone()
        return _analysis(row) if row else None

    # ------------------------------------------------------------------------------ exams

    def add_exam(self, id_: str, *, patient: str | None = None, protocol: str = "BLUE") -> dict:
        now = time.time()
        self._exec("INSERT INTO exams (id, created, updated, status, patient, protocol) VALUES (?, ?, ?, 'open', ?, ?)",
                   (id_, now, now, patient, protocol))
        return self.get_exam(id_)

    def get_exam(self, id_: str) -> dict | None:
        row = self._exec("SELECT * FROM exams WHERE id = ?", (id_,)).fetchone()
        return _exam(row) if row else None

    def list_exams(self, offset: int = 0, limit: int = 20) -> tuple[int, list[dict]]:
        """Exams, newest first."""
        total = self._exec("SELECT COUNT(*) FROM exams").fetchone()[0]
        rows = self._exec("SELECT * FROM exams ORDER BY created DESC, id LIMIT ? OFFSET ?",
                          (int(limit), int(offset))).fetchall()
        return total, [_exam(r) for r in rows]

    def exams_with_status(self, *statuses: str) -> list[dict]:
        q = ",".join("?" * len(statuses))
        return [_exam(r) for r in self._exec(f"SELECT * FROM exams WHERE status IN ({q}) ORDER BY created, id",
                                             statuses).fetchall()]

    def exam_recordings(self, exam_id: str) -> list[dict]:
        """An exam's recordings (analysis rows), in the order they were added."""
        rows = self._exec("SELECT * FROM analyses WHERE exam = ? ORDER BY created, rowid", (exam_id,)).fetchall()
        return [_analysis(r) for r in rows]

    def _exam_changed(self, exam_id: str, status: str) -> bool:
        cur = self._exec("UPDATE exams SET status = ?, revision = revision + 1, result = NULL, error = NULL, "
                         "concluded = NULL, updated = ? WHERE id = ?", (status, time.time(), exam_id))
        return cur.rowcount > 0

    def set_zone(self, analysis_id: str, zone: str | None, source: str | None) -> dict | None:
        """Move an exam's recording to another zone (None: unassigned); its exam's conclusion is outdated
        (status 'running' until it is drawn again). None when there is no such recording."""
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            row = con.execute("UPDATE analyses SET zone = ?, zone_source = ?, updated = ? WHERE id = ? "
                              "AND exam IS NOT NULL RETURNING exam",
                              (zone, source, time.time(), analysis_id)).fetchone()
            if row is not None:
                self._exam_changed(row[0], "running")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return self.get_analysis(analysis_id) if row is not None else None

    def conclude_exam(self, exam_id: str, revision: int, **fields) -> bool:
        """Record an exam's conclusion (status done or failed, result, error, model), unless its
        recordings or zones changed since `revision` was read (then False: it is drawn again later)."""
        bad = set(fields) - set(EXAM_COLUMNS)
        if bad:
            raise KeyError(f"unknown column(s) {sorted(bad)}")
        fields = dict(fields)
        if fields.get("result") is not None:
            fields["result"] = json.dumps(jsonable(fields["result"]), allow_nan=False)
        fields["updated"] = fields["concluded"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        cur = self._exec(f"UPDATE exams SET {cols} WHERE id = ? AND revision = ?", (*fields.values(), exam_id,
                                                                                   int(revision)))
        return cur.rowcount > 0

    def delete_exam(self, exam_id: str) -> tuple[dict, list[dict]] | None:
        """Delete an exam and its recordings' rows; (exam, recordings) as they were, or None."""
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            row = con.execute("DELETE FROM exams WHERE id = ? RETURNING *", (exam_id,)).fetchone()
            clips = con.execute("DELETE FROM analyses WHERE exam = ? RETURNING *", (exam_id,)).fetchall()
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return (_exam(row), [_analysis(c) for c in clips]) if row else None

    # ------------------------------------------------------------------------------ contributions

    def add_contribution(self, row: dict) -> dict:
        row = dict(row)
        row.setdefault("created", time.time())
        row.setdefault("status", "pending")
        row["findings"] = json.dumps(row.get("findings") or {})
        cols = [c for c in CONTRIBUTION_COLUMNS if c in row]
        self._exec(f"INSERT INTO contributions ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                   [row[c] for c in cols])
        return self.get_contribution(row["id"])

    def get_contribution(self, id_: str) -> dict | None:
        row = self._exec("SELECT * FROM contributions WHERE id = ?", (id_,)).fetchone()
        return _contribution(row) if row else None

    def list_contributions(self, status: str | None = None, offset: int = 0, limit: int = 50) -> tuple[int, list[dict]]:
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        total = self._exec(f"SELECT COUNT(*) FROM contributions {where}", args).fetchone()[0]
        rows = self._exec(f"SELECT * FROM contributions {where} ORDER BY created, id LIMIT ? OFFSET ?",
                          (*args, int(limit), int(offset))).fetchall()
        return total, [_contribution(r) for r in rows]

    def decide_contribution(self, id_: str, status: str, note: str | None = None) -> dict | None:
        if status not in ("accepted", "rejected", "pending"):
            raise ValueError(status)
        cur = self._exec("UPDATE contributions SET status = ?, decided = ?, note = ? WHERE id = ?",
                         (status, time.time(), note, id_))
        return self.get_contribution(id_) if cur.rowcount else None


def _analysis(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["result"] = json.loads(d["result"]) if d.get("result") else None
    d["files"] = json.loads(d["files"]) if d.get("files") else []
    d["deidentified"] = bool(d["deidentified"])
    return d


def _exam(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["result"] = json.loads(d["result"]) if d.get("result") else None
    return d


def _contribution(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["findings"] = json.loads(d["findings"]) if d.get("findings") else {}
    d["deidentified"] = bool(d["deidentified"])
    return d
