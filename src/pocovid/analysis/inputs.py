"""Which recordings a batch analyses: files as given, every recording under a folder, a CSV list.

    inputs = collect_recordings(["scan.mp4", "exams/"], list_file="todo.csv", exclude=["out"])
    inputs.paths      # in order: files as given, a folder's recordings sorted; each once
    inputs.skipped    # "<file>: not a recording (...)" for files under the folders that were left out

A folder is walked recursively: files whose extension is a recording's (video, image, DICOM), and
extension-less files that are DICOM (the `DICM` marker: 132 bytes read), sorted by path; hidden
files and folders (a leading dot) are left out, and so are `exclude` (the output folder) and the
files of any sub-folder holding a `result.json` (an earlier analysis's key frames and video). Folder
links are followed once: a folder reached twice (a link loop, or two links to one folder) is
walked the first time only. The walk is bounded: at most `MAX_DEPTH` folders deep and
`MAX_RECORDINGS` recordings, else a one-line `PocovidError`.
"""

from __future__ import annotations

import csv
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from pocovid.errors import PocovidError
from pocovid.files import path_text
from pocovid.media import MEDIA_EXTENSIONS
from pocovid.media.reader import looks_like_dicom

MAX_RECORDINGS = 100_000  # per call; a larger archive goes in several calls (or lists)
MAX_DEPTH = 32  # folders below the one given
MAX_ENTRIES = 1_000_000  # names looked at in one walk (files that are not recordings included)


@dataclass
class Recordings:
    paths: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _dir_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def is_recording(path: str | os.PathLike) -> bool:
    """A file name a recording has, or an extension-less regular file that is DICOM (a FIFO is
    never opened: it would block)."""
    ext = os.path.splitext(os.fsdecode(path))[1].lower()
    if ext in MEDIA_EXTENSIONS:
        return True
    if ext:
        return False
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
    return regular and looks_like_dicom(Path(path))


def recordings_in(folder: str | os.PathLike, exclude=()) -> Recordings:
    """The recordings under `folder` (see the module's text), as paths that start with `folder` as
    given; `exclude`: folders left out (e.g. the output folder inside the input)."""
    root = os.fsdecode(folder)
    seen = {k for k in (_dir_key(os.fsdecode(e)) for e in (*exclude, root)) if k}
    out = Recordings()
    found: list[tuple[tuple[str, ...], str]] = []
    n_entries = 0

    def on_error(e: OSError) -> None:
        out.skipped.append(f"{path_text(e.filename or root)}: cannot read folder "
                           f"({(e.strerror or type(e).__name__).lower()})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        rel = os.path.relpath(dirpath, root)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        keep = []
        for d in sorted(dirnames):
            key = _dir_key(os.path.join(dirpath, d))
            if _hidden(d) or key is None or key in seen:
                continue  # hidden, unreadable, excluded, or already walked (a link loop)
            if depth >= MAX_DEPTH:
                raise PocovidError(f"{path_text(root)}: folders nested deeper than {MAX_DEPTH} levels "
                                   f"({path_text(os.path.join(dirpath, d))})")
            seen.add(key)
            keep.append(d)
        dirnames[:] = keep
        n_entries += len(filenames) + len(dirnames)
        if n_entries > MAX_ENTRIES:
            raise PocovidError(f"{path_text(root)}: more than {MAX_ENTRIES} entries; analyse sub-folders or a "
                               "--list one at a time")
        if "result.json" in filenames and depth:  # an analysis's folder: its PNGs and videos are outputs
            continue
        for name in filenames:
            if _hidden(name):
                continue
            p = os.path.join(dirpath, name)
            if is_recording(p):
                found.append((tuple(Path(os.path.relpath(p, root)).parts), p))
            else:
                ext = os.path.splitext(name)[1].lower()
                out.skipped.append(f"{path_text(p)}: not a recording "
                                   + (f"(file type '{ext}')" if ext else "(no extension, not DICOM)"))
        if len(found) > MAX_RECORDINGS:
            raise PocovidError(f"{path_text(root)}: more than {MAX_RECORDINGS} recordings; analyse sub-folders "
                               "one at a time")
    out.paths = [p for _, p in sorted(found)]
    return out


def recordings_listed(list_file: str | os.PathLike) -> list[str]:
    """The `path` column of a CSV file, in its order; a relative path is taken from the CSV's
    folder. Empty cells are left out."""
    f = Path(list_file)
    try:
        with open(f, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in reader.fieldnames or []]
            if "path" not in cols:
                raise PocovidError(f"{path_text(f)}: no 'path' column (columns: {', '.join(cols) or 'none'})")
            reader.fieldnames = cols
            rows = []
            for row in reader:
                cell = (row.get("path") or "").strip()
                if cell:
                    rows.append(cell)
                if len(rows) > MAX_RECORDINGS:
                    raise PocovidError(f"{path_text(f)}: more than {MAX_RECORDINGS} rows; split the list")
    except OSError as e:
        raise PocovidError(f"{path_text(f)}: cannot read the list ({(e.strerror or type(e).__name__).lower()})") \
            from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise PocovidError(f"{path_text(f)}: not a CSV file of UTF-8 text ({type(e).__name__})") from None
    return [p if os.path.isabs(p) else os.path.join(os.fsdecode(f.parent), p) for p in rows]


def collect_recordings(args=(), list_file: str | os.PathLike | None = None, exclude=()) -> Recordings:
    """Files as given (kept even when their name is not a recording's: the batch then says why it
    failed), folders expanded (`recordings_in`), then the rows of `list_file`; a file reached twice
    (the same real path) is kept the first time."""
    out = Recordings()
    paths: list[str] = []
    for a in args:
        a = os.fsdecode(a)
        if os.path.isdir(a):
            sub = recordings_in(a, exclude)
            paths += sub.paths
            out.skipped += sub.skipped
        else:
            paths.append(a)
    if list_file is not None:
        paths += recordings_listed(list_file)
    seen: set[str] = set()
    for p in paths:
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            out.paths.append(p)
    if len(out.paths) > MAX_RECORDINGS:
        raise PocovidError(f"more than {MAX_RECORDINGS} recordings in one call; analyse them in parts")
    return out



def demo_recordings(data: str | os.PathLike | None = None) -> list[dict]:
    """The demo clips found on this machine (`pocovid.analysis.demo`: --data / $POCOVID_DEMO_DATA,
    the download cache; never downloaded here) as rows of clips.csv with `path`
    set to the copy found. They are not packaged; none found: a one-line `PocovidError` saying how to
    get them."""
    from pocovid.analysis.demo import find_demo_clips

    search = find_demo_clips(data, download=False)
    if not search.found:
        raise PocovidError("the demo clips are not on this machine (they are not packaged; looked in "
                           f"{', '.join(search.looked_in)}): run `pocovid demo` once to download them, or set "
                           "POCOVID_DEMO_DATA to a POCUS dataset folder")
    return [{"path": str(path), "label": c.label, "finding": c.finding, "source": c.source, "licence": c.licence}
            for c, path, _ in search.found]
