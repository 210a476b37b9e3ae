"""Multipart uploads read as a stream, never whole into memory and never past the size limit.

`receive_form(request, storage, max_file_bytes=...)` reads the request body chunk by chunk with
python-multipart's streaming parser, writes the file part to a temporary file under random name,
and stops at once with `UploadError(413)` when the file passes the limit (a too-large
Content-Length is refused before anything is read). The type comes from the first bytes
(`sniff_media`), never from the client's file name or Content-Type: `UploadError(415)` as soon
as they show something pocovid cannot read. Other refusals: 400 (not multipart, a bad boundary,
no file, empty file, truncated body, more files than `max_files`), 422 (a text field too long or
not UTF-8), 507 (the disk holds less than `min_free_bytes` besides the upload, checked before and
while reading, or a write fails with ENOSPC).

With `max_files` > 1 (an exam's recordings) each file is limited on its own, and `skip_refused`
lists a file of a type pocovid cannot read, or an empty one, in `form.refused` and goes on with the
others. The client's name of each file (`ReceivedFile.name`) is kept in memory only, for the caller
to read a zone from it; it is never stored.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pocovid.server.storage import SNIFF_BYTES, SUPPORTED, MediaType, Storage, sniff_media

log = logging.getLogger("pocovid.server")
T = TypeVar("T")

#: Room for the multipart framing on top of the file limit (plus the text fields' own limits).
BODY_OVERHEAD = 64 * 1024
#: RFC 2046: a multipart boundary has 1 to 70 characters.
MAX_BOUNDARY = 70
#: Free space is checked again each time this much more of the file has been written.
SPACE_CHECK_BYTES = 8 * 1024 * 1024


class UploadError(Exception):
    """A refused upload: HTTP status and a one-line reason for the client."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class ReceivedFile:
    path: Path  # temporary file in storage.tmp; move or delete it
    size: int
    media: MediaType
    name: str = ""  # the client's file name (base name), in memory only: never stored
    index: int = 0  # its place among the request's file parts (0-based)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


@dataclass
class RefusedFile:
    """A file part left out of a multi-file upload (`skip_refused`): its place, client name and why."""

    index: int
    name: str
    status: int
    reason: str


@dataclass
class ReceivedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[ReceivedFile] = field(default_factory=list)
    refused: list[RefusedFile] = field(default_factory=list)

    @property
    def file(self) -> ReceivedFile | None:
        """The (first) file received."""
        return self.files[0] if self.files else None

    def discard(self) -> None:
        for f in self.files:
            f.discard()


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.0f} MB" if n >= 1024 * 1024 else f"{n} bytes"


def disk_full() -> UploadError:
    return UploadError(507, "the server's disk is full: the upload cannot be stored (try again later)")


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def check_free_space(storage: Storage, min_free_bytes: int, incoming: int = 0) -> None:
    """UploadError(507) when storing `incoming` more bytes would leave less than `min_free_bytes`."""
    if min_free_bytes <= 0 and incoming <= 0:
        return
    try:
        free = storage.free_bytes()
    except OSError:
        return
    if free - incoming < min_free_bytes:
        log.warning("upload refused: %d bytes free on the data folder's disk, %d incoming, %d kept free",
                    free, incoming, min_free_bytes)
        raise disk_full()


class _Collector:
    """python-multipart callbacks: one file part (streamed to disk), small text fields in memory."""

    def __init__(self, storage: Storage, max_file_bytes: int, file_field: str, text_fields: frozenset[str],
                 max_field_bytes: int, min_free_bytes: int = 0, max_files: int = 1, skip_refused: bool = False):
        self.storage = storage
        self.max_files = max_files
        self.skip_refused = skip_refused
        self._n_files = 0
        self._client_name = ""
        self.min_free_bytes = min_free_bytes
        self._checked_at = 0
        self.max_file_bytes = max_file_bytes
        self.file_field = file_field
        self.text_fields = text_fields
        self.max_field_bytes = max_field_bytes
        self.form = ReceivedForm()
        self.ended = False
        self._hname = bytearray()
        self._hvalue = bytearray()
        self._headers: dict[str, bytes] = {}
        self._part: str | None = None  # "file" | "text" | "skip"
        self._name = ""
        self._buf = bytearray()
        self._fh = None
        self._tmp: Path | None = None
        self._size = 0
        self._head = bytearray()
        self._media: MediaType | None = None
        self.n_parts = 0

    # callbacks ------------------------------------------------------------------------------
    def on_part_begin(self):
        self._headers = {}
        self._part = None
        self.n_parts += 1
        if self.n_parts > 64:
            raise UploadError(400, "too many form parts")

    def on_header_field(self, data, start, end):
        self._hname += data[start:end]

    def on_header_value(self, data, start, end):
        self._hvalue += data[start:end]

    def on_header_end(self):
        self._headers[bytes(self._hname).decode("latin-1").strip().lower()] = bytes(self._hvalue)
        self._hname.clear()
        self._hvalue.clear()

    def on_headers_finished(self):
        from python_multipart.multipart import parse_options_header

        _, params = parse_options_header(self._headers.get("content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        self._name = name
        if name == self.file_field:
            if self._n_files >= self.max_files or self._fh is not None:
                raise UploadError(400, f"only one file per upload (field '{self.file_field}')" if self.max_files == 1
                                  else f"at most {self.max_files} files in this upload (field '{self.file_field}')")
            self._n_files += 1
            raw = params.get(b"filename", b"").decode("utf-8", "replace")
            self._client_name = raw.replace("\\", "/").rsplit("/", 1)[-1][:255]
            self._part = "file"
            self._tmp = self.storage.tmp_path()
            self._fh = open(self._tmp, "wb")
            self._size = 0
            self._head.clear()
            self._media = None
        elif name in self.text_fields:
            self._part = "text"
            self._buf.clear()
        else:
            self._part = "skip"  # unknown fields are read past (they count towards the body limit)

    def on_part_data(self, data, start, end):
        chunk = data[start:end]
        if self._part == "refused":
            return
        if self._part == "file":
            self._size += len(chunk)
            if self._size > self.max_file_bytes:
                raise UploadError(413, f"file too large: the limit is {_mb(self.max_file_bytes)}")
            if self._media is None:
                self._head += chunk[: SNIFF_BYTES - len(self._head)]
                if len(self._head) >= SNIFF_BYTES and not self._sniff():
                    return
            self._fh.write(chunk)
            if self.min_free_bytes and self._size - self._checked_at >= SPACE_CHECK_BYTES:
                self._checked_at = self._size
                check_free_space(self.storage, self.min_free_bytes)
        elif self._part == "text":
            self._buf += chunk
            if len(self._buf) > self.max_field_bytes:
                raise UploadError(422, f"form field '{self._name}' is too long (at most {self.max_field_bytes} bytes)")

    def on_part_end(self):
        if self._part == "file":
            self._fh.close()
            self._fh = None
            if self._size == 0:
                self._refuse(UploadError(400, "the file is empty (0 bytes)"))
            elif self._media is not None or self._sniff():
                self.form.files.append(ReceivedFile(self._tmp, self._size, self._media, self._client_name,
                                                    self._n_files - 1))
                self._tmp = None
        elif self._part == "text":
            try:
                self.form.fields[self._name] = bytes(self._buf).decode("utf-8")
            except UnicodeDecodeError:
                raise UploadError(422, f"form field '{self._name}' is not UTF-8 text") from None
        self._part = None

    def on_end(self):
        self.ended = True

    # ----------------------------------------------------------------------------------------
    def _sniff(self) -> bool:
        """The file's type from its first bytes; False when it was refused and skipped (`skip_refused`)."""
        m = sniff_media(bytes(self._head))
        if m is None:
            self._refuse(UploadError(415, f"unsupported file type: not a {SUPPORTED} file (the type is read "
                                          "from the content, not the name)"))
            return False
        self._media = m
        return True

    def _refuse(self, e: UploadError) -> None:
        """Refuse the file part being read: the whole upload, or with `skip_refused` this file only."""
        if not self.skip_refused:
            raise e
        self._drop_file()
        self.form.refused.append(RefusedFile(self._n_files - 1, self._client_name, e.status, e.detail))
        self._part = "refused"

    def _drop_file(self) -> None:
        """Close and delete the file part being written (a refused or unfinished upload)."""
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            self._tmp = None

    def cleanup(self):
        self._drop_file()
        self.form.discard()

    def callbacks(self) -> dict:
        return {k: getattr(self, k) for k in ("on_part_begin", "on_part_data", "on_part_end", "on_header_field",
                                              "on_header_value", "on_header_end", "on_headers_finished", "on_end")}


async def receive_form(request, storage: Storage, *, max_file_bytes: int, file_field: str = "file",
                       text_fields=(), max_field_bytes: int = 4096, require_file: bool = True,
                       min_free_bytes: int = 0, max_files: int = 1, skip_refused: bool = False) -> ReceivedForm:
    """Read a multipart/form-data request body as it arrives (see the module docstring).

    Returns the text fields named in `text_fields` and the file parts (temporary files the
    caller moves or discards; at most `max_files`, each at most `max_file_bytes`). Raises
    `UploadError`; nothing is left on disk then.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UploadError(400, f"expected a multipart/form-data body with the recording in the field '{file_field}'")
    if len(boundary) > MAX_BOUNDARY:
        raise UploadError(400, f"bad multipart boundary: longer than {MAX_BOUNDARY} characters (RFC 2046)")
    text_fields = tuple(text_fields)
    n_files = max(1, max_files)
    max_body = (n_files * max_file_bytes + (n_files - 1) * 1024 + BODY_OVERHEAD
                + len(text_fields) * (max_field_bytes + 256))
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise UploadError(400, "bad Content-Length header") from None
        if n > max_body:
            log.info("upload refused before reading: Content-Length %d > limit %d", n, max_body)
            raise UploadError(413, f"file too large: the limit is {_mb(max_file_bytes)}")
        check_free_space(storage, min_free_bytes, n)
    else:
        check_free_space(storage, min_free_bytes)
    col = _Collector(storage, max_file_bytes, file_field, frozenset(text_fields), max_field_bytes, min_free_bytes,
                     max_files=n_files, skip_refused=skip_refused)
    received = 0
    try:
        parser = MultipartParser(boundary, col.callbacks())
        async for chunk in request.stream():
            if not chunk:
                continue
            received += len(chunk)
            if received > max_body:
                raise UploadError(413, f"file too large: the limit is {_mb(max_file_bytes)}")
            parser.write(chunk)
        parser.finalize()
        if not col.ended:
            raise UploadError(400, "the upload is incomplete (the multipart body ends early)")
        if require_file and col.form.file is None:
            if col.form.refused:  # every file was refused: the first one's reason
                raise UploadError(col.form.refused[0].status, col.form.refused[0].reason)
            raise UploadError(400, f"no file in the upload (form field '{file_field}')")
    except UploadError as e:
        col.cleanup()
        log.info("upload refused (%d) after reading %d bytes", e.status, received)
        raise
    except Exception as e:
        col.cleanup()
        if is_disk_full(e):
            log.warning("upload refused after %d bytes: the disk is full", received)
            raise disk_full() from None
        if type(e).__name__ == "ClientDisconnect":
            log.info("upload abandoned by the client after %d bytes", received)
            raise UploadError(400, "the client closed the connection during the upload") from None
        if type(e).__name__ in ("MultipartParseError", "FormParserError") or "multipart" in type(e).__module__:
            raise UploadError(400, "malformed multipart/form-data body") from None
        raise
    except BaseException:
        col.cleanup()
        raise
    return col.form


async def store_upload(f: ReceivedFile, dest: Path) -> tuple[bool, str | None]:
    """Move the received file to `dest`; DICOM is de-identified on the way and the original
    (identified) bytes never stay. Returns (de-identified, the DICOM's BurnedInAnnotation)."""
    from starlette.concurrency import run_in_threadpool

    from pocovid.server.deid import DeidError, deidentify_dicom

    if f.media.kind != "dicom":
        try:
            os.replace(f.path, dest)
        except OSError as e:
            f.discard()
            if is_disk_full(e):
                raise disk_full() from None
            raise
        return False, None
    try:
        rep = await run_in_threadpool(deidentify_dicom, f.path, dest)
    except DeidError as e:
        raise UploadError(400, f"DICOM file refused: {e}") from None
    except OSError as e:
        with contextlib.suppress(OSError):
            dest.unlink()
        if is_disk_full(e):
            raise disk_full() from None
        raise
    finally:
        f.discard()
    return True, rep.burned_in_annotation


def database_error(e: sqlite3.OperationalError, what: str = "upload") -> UploadError:
    """The answer to a failed write of `what`'s row: 507 when the disk is full, else 503 (busy)."""
    if "full" in str(e):
        return UploadError(507, f"the server's disk is full: the {what} cannot be recorded")
    return UploadError(503, f"the service's database is busy; the {what} was not stored (try again)")


async def store_and_record(f: ReceivedFile, dest: Path, record: Callable[[bool], T]) -> tuple[bool, T]:
    """`store_upload` the file to `dest`, then `record(de-identified)` its row (in a worker thread:
    sqlite blocks). Returns (de-identified, what `record` returned). Whatever fails, the stored file
    is removed: never a file without its row. Errors of `record` but the database's pass through."""
    from starlette.concurrency import run_in_threadpool

    stored = False
    try:
        deid, _ = await store_upload(f, dest)
        row = await run_in_threadpool(record, deid)
        stored = True
    except sqlite3.OperationalError as e:
        raise database_error(e) from None
    finally:
        if not stored:
            f.discard()
            with contextlib.suppress(OSError):
                dest.unlink()
    return deid, row
