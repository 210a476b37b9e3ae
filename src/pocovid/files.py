"""Writing files safely: every output appears whole or not at all, and JSON is plain.

    with atomic_path("out/result.json") as tmp:   # write anything to `tmp`; renamed into place
        tmp.write_text(...)
    write_json("out/metrics.json", metrics)       # numpy values and NaN handled (see `jsonable`)

A reader never sees a half-written file, and a crash leaves at most a hidden `.NAME.*.tmp` beside
the target (never a truncated target).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside `path`; when the block ends without error it is renamed onto
    `path` (ordinary permissions), otherwise removed. `durable`: fsync the file and the folder
    (model files, where a power cut must not leave an empty file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        with contextlib.suppress(OSError):  # make the rename itself durable
            dfd = os.open(p.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`text` written to `path` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def jsonable(obj: Any) -> Any:
    """`obj` with numpy scalars and arrays turned into Python ones, tuples into lists, sets into
    lists (sorted when their items sort), paths into strings, NaN / inf into None, array-likes
    (`.tolist()`) into lists and any other object into its `str`: something
    `json.dumps(..., allow_nan=False)` accepts."""
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        items = [jsonable(v) for v in obj]
        try:
            return sorted(items)
        except TypeError:  # mixed types: no order
            return items
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if callable(getattr(obj, "tolist", None)):  # array-likes (torch tensors, ...)
        return jsonable(obj.tolist())
    return str(obj)


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Plain JSON text of `obj` (see `jsonable`)."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """`obj` as plain JSON (see `jsonable`), written to `path` atomically."""
    return write_text(path, dumps(obj, indent) + "\n")


_ESCAPED_BYTE = re.compile(r"\\x([89a-fA-F][0-9a-fA-F])")


def path_text(path: str | bytes | os.PathLike) -> str:
    """A path (or any text that may hold one) as text safe to write to a UTF-8 CSV or JSON file or
    print: bytes of the name that are not UTF-8 (on Linux a name may hold any bytes; Python keeps
    them as lone surrogates) are written as `\\xNN`, e.g. b"caf\\xe9.mp4" -> "caf\\xe9.mp4" (a
    backslash, 'x', 'e', '9'). Every other character is kept. `path_from_text` reverses it."""
    s = os.fsdecode(path) if isinstance(path, bytes) else os.fspath(path) if isinstance(path, os.PathLike) \
        else str(path)
    try:
        raw = s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        raw = s.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def path_from_text(text: str) -> str:
    """The path `path_text` wrote: each `\\x80`..`\\xff` back to its byte (as Python holds it, a
    surrogate), so the file opens again. A name that really holds a backslash, 'x' and two hex
    digits 80-ff is the one case read back differently."""
    if "\\x" not in text:
        return text
    return _ESCAPED_BYTE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), text)
