"""The data folder and what is stored in it, under random ids only.

    DATA/pocovid.sqlite3               state (db.py)
    DATA/uploads/<id>.<ext>            uploaded recordings (DICOM de-identified), <ext> from the content
    DATA/analyses/<id>/                artifacts of an analysis (result.json, key frames, report, ...)
    DATA/exams/<exam>/                 an exam: exam.json, exam.html and, per recording, <id>/ (as above)
    DATA/contributions/<id>.<ext>      contributed recordings (DICOM de-identified)
    DATA/tmp/                          bodies being received (emptied on start)

No path is ever built from anything a client sent: ids are generated here (`new_id`) and checked
(`valid_id`) before use, extensions come from `sniff_media` (the file's first bytes).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

ID_RE = re.compile(r"^[0-9a-f]{16}$")


def new_id() -> str:
    """A random id: 16 hex digits (64 bits)."""
    return secrets.token_hex(8)


def valid_id(s: str) -> bool:
    return isinstance(s, str) and bool(ID_RE.fullmatch(s))


@dataclass(frozen=True)
class MediaType:
    kind: str  # "video" | "image" | "dicom"
    ext: str  # extension the readers dispatch on, with the dot
    mime: str
    name: str  # short format name for people and the API


# What the readers (pocovid.media) open. Anything else is refused with 415.
SUPPORTED = "video (MP4, MOV, M4V, AVI, MPEG, MKV, WebM, WMV, GIF), image (PNG, JPEG, BMP, TIFF) or DICOM"
SNIFF_BYTES = 132  # DICOM's "DICM" sits at offset 128


def sniff_media(head: bytes) -> MediaType | None:
    """The type of a recording from its first bytes (at least `SNIFF_BYTES` when the file has
    them), never from its name. None when it is nothing pocovid reads."""
    h = head
    if len(h) >= 132 and h[128:132] == b"DICM":
        return MediaType("dicom", ".dcm", "application/dicom", "dicom")
    if len(h) >= 12 and h[4:8] == b"ftyp":
        brand = h[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis", b"crx "):
            return None  # HEIF / AVIF stills: not read
        if brand == b"qt  ":
            return MediaType("video", ".mov", "video/quicktime", "mov")
        return MediaType("video", ".mp4", "video/mp4", "mp4")
    if len(h) >= 8 and h[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return MediaType("video", ".mov", "video/quicktime", "mov")  # old QuickTime without ftyp
    if len(h) >= 12 and h[:4] == b"RIFF" and h[8:12] == b"AVI ":
        return MediaType("video", ".avi", "video/x-msvideo", "avi")
    if h[:6] in (b"GIF87a", b"GIF89a"):
        return MediaType("video", ".gif", "image/gif", "gif")
    if h[:8] == b"\x89PNG\r\n\x1a\n":
        return MediaType("image", ".png", "image/png", "png")
    if h[:3] == b"\xff\xd8\xff":
        return MediaType("image", ".jpg", "image/jpeg", "jpeg")
    if len(h) >= 18 and h[:2] == b"BM" and int.from_bytes(h[14:18], "little") in (12, 16, 40, 52, 56, 64, 108, 124):
        return MediaType("image", ".bmp", "image/bmp", "bmp")
    if h[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return MediaType("image", ".tif", "image/tiff", "tiff")
    if h[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return MediaType("video", ".mpg", "video/mpeg", "mpeg")
    if h[:4] == b"\x1a\x45\xdf\xa3":
        if b"webm" in h[:64]:
            return MediaType("video", ".webm", "video/webm", "webm")
        return MediaType("video", ".mkv", "video/x-matroska", "mkv")
    if h[:16] == bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"):
        return MediaType("video", ".wmv", "video/x-ms-wmv", "wmv")
    return None


def sniff_file(path: str | os.PathLike) -> MediaType | None:
    with open(path, "rb") as f:
        return sniff_media(f.read(SNIFF_BYTES))


class Storage:
    """Paths inside the data folder; every name is an id from `new_id` plus a sniffed extension."""

    DB_NAME = "pocovid.sqlite3"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.uploads = self.root / "uploads"
        self.analyses = self.root / "analyses"
        self.contributions = self.root / "contributions"
        self.exams = self.root / "exams"
        self.tmp = self.root / "tmp"
        for d in (self.root, self.uploads, self.analyses, self.exams, self.contributions, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.root, 0o700)  # recordings are health data: owner only

    @property
    def db_path(self) -> Path:
        return self.root / self.DB_NAME

    def free_bytes(self) -> int:
        """Free space on the data folder's file system (for this user)."""
        return shutil.disk_usage(self.root).free

    def clean_tmp(self) -> int:
        """Remove bodies left half-received by a stop; returns how many."""
        n = 0
        for p in self.tmp.iterdir():
            with contextlib.suppress(OSError):
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                n += 1
        return n

    def tmp_path(self) -> Path:
        return self.tmp / f"{new_id()}.part"

    def upload_path(self, id_: str, ext: str) -> Path:
        return self.uploads / f"{_checked(id_)}{_checked_ext(ext)}"

    def analysis_dir(self, id_: str, exam: str | None = None) -> Path:
        """An analysis' artifacts; a recording of an exam has its folder inside the exam's."""
        return (self.exam_dir(exam) if exam else self.analyses) / _checked(id_)

    def exam_dir(self, id_: str) -> Path:
        return self.exams / _checked(id_)

    def contribution_path(self, id_: str, ext: str) -> Path:
        return self.contributions / f"{_checked(id_)}{_checked_ext(ext)}"

    def relative(self, p: Path) -> str:
        return Path(p).resolve().relative_to(self.root).as_posix()

    def resolve(self, rel: str) -> Path:
        p = (self.root / rel).resolve()
        p.relative_to(self.root)  # ValueError outside the data folder
        return p

    def remove_analysis(self, id_: str, upload_rel: str | None, exam: str | None = None) -> None:
        shutil.rmtree(self.analysis_dir(id_, exam), ignore_errors=True)
        if upload_rel:
            with contextlib.suppress(OSError, ValueError):
                self.resolve(upload_rel).unlink()

    def remove_exam(self, id_: str, uploads: list[str]) -> None:
        """An exam's folder (its recordings' artifacts with it) and its recordings' uploads."""
        shutil.rmtree(self.exam_dir(id_), ignore_errors=True)
        for rel in uploads:
            with contextlib.suppress(OSError, ValueError):
                self.resolve(rel).unlink()


def _checked(id_: str) -> str:
    if not valid_id(id_):
        raise ValueError("bad id")
    return id_


def _checked_ext(ext: str) -> str:
    if not re.fullmatch(r"\.[a-z0-9]{2,5}", ext):
        raise ValueError("bad extension")
    return ext

