"""The real clips of `pocovid demo`: found on this machine or downloaded, checked, never shipped.

    search = find_demo_clips(data="~/pocus", download=True, log=print)
    search.found      # [(DemoClip, path, where it came from)], in clips.csv's order
    search.missing    # the clips that could not be had (the reasons went to `log`)

assets/demo/clips.csv lists two clips of the public POCUS dataset (Born et al.; the clips are CC BY
4.0, assets/demo/ATTRIBUTION.md) with their download URL, size and SHA-256. The dataset's rules
forbid copying its files into this repository, so the package holds only that list. Each clip is
looked for in this order, the first good copy wins:

1. `data` (`--data DIR`), else $POCOVID_DEMO_DATA: a POCUS dataset folder (the clip at
   `pocus_videos/convex/<name>`) or a folder holding the files themselves (where the data lies is
   the caller's to say: `make demo` passes a dataset it finds beside the checkout);
2. the download cache, `$XDG_CACHE_HOME/pocovid/demo` (default `~/.cache/pocovid/demo`);
3. downloaded from its URL into that cache (`download_clip`), unless `download=False`.

Every copy is checked against the size and SHA-256 of clips.csv; one that differs is named (via
`log`) and passed over. Nothing is ever written outside the cache, and nothing is deleted but the
download's own temporary file.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import urlopen

from pocovid.errors import PocovidError
from pocovid.files import atomic_path, path_text

DEMO_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"
DEMO_LIST = DEMO_DIR / "clips.csv"  # + ATTRIBUTION.md
DATA_ENV = "POCOVID_DEMO_DATA"
CLIP_SUBDIR = "pocus_videos/convex"  # where a POCUS dataset folder holds the clips
DOWNLOAD_TIMEOUT_S = 30.0
SOURCE = "github.com/jannisborn/covid19_ultrasound"  # the dataset's repository (the URLs of clips.csv)
_CHUNK = 1 << 16


@dataclass(frozen=True)
class DemoClip:
    name: str  # the dataset's file name
    label: str  # the dataset's label
    finding: str
    source: str  # the article (doi URL)
    licence: str
    url: str  # public download URL (the dataset's GitHub repository)
    size: int  # bytes
    sha256: str


@dataclass
class DemoSearch:
    found: list[tuple[DemoClip, Path, str]] = field(default_factory=list)  # clip, file, where from
    missing: list[DemoClip] = field(default_factory=list)
    looked_in: list[str] = field(default_factory=list)  # the folders searched, as shown to the user
    download_failed: bool = False  # a download was tried and failed


def demo_clips() -> list[DemoClip]:
    """The rows of assets/demo/clips.csv."""
    try:
        with open(DEMO_LIST, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return [DemoClip(name=r["path"], label=r["label"], finding=r["finding"], source=r["source"],
                         licence=r["licence"], url=r["url"], size=int(r["size"]), sha256=r["sha256"].lower())
                for r in rows]
    except (OSError, KeyError, ValueError) as e:
        raise PocovidError(f"{DEMO_LIST}: the list of demo clips is missing or damaged in this installation "
                           f"({type(e).__name__}: {e})") from None


def cache_dir() -> Path:
    """Where downloaded clips are kept: $XDG_CACHE_HOME/pocovid/demo, else ~/.cache/pocovid/demo."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "pocovid" / "demo"


def search_folders(data: str | os.PathLike | None = None, cwd: str | os.PathLike | None = None) \
        -> list[tuple[str, Path]]:
    """(what it is, folder) in search order, the cache last; each folder once. `data` replaces
    $POCOVID_DEMO_DATA."""
    out: list[tuple[str, Path]] = []
    given = os.fspath(data) if data is not None else os.environ.get(DATA_ENV) or None
    if given:
        out.append(("--data" if data is not None else f"${DATA_ENV}", Path(given).expanduser()))
    out.append(("cache", cache_dir()))
    seen: set[str] = set()
    unique = []
    for what, folder in out:
        key = os.path.realpath(folder)
        if key not in seen:
            seen.add(key)
            unique.append((what, folder))
    return unique


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_copy(path: str | os.PathLike, clip: DemoClip) -> str | None:
    """None when `path` holds the clip's exact bytes, else why not (one line)."""
    try:
        size = os.stat(path).st_size
        if size != clip.size:
            return f"{size} bytes, expected {clip.size}"
        digest = sha256_of(path)
    except OSError as e:
        return f"cannot read it ({(e.strerror or type(e).__name__).lower()})"
    if digest != clip.sha256:
        return f"SHA-256 {digest[:12]}..., expected {clip.sha256[:12]}... (clips.csv)"
    return None


class _Refused(Exception):
    pass


class DownloadError(PocovidError):
    """A download that failed: `<url>: download failed (<reason>)`. `network`: no connection or no
    answer (other downloads would fail too), not a refusal by the server or a wrong file."""

    def __init__(self, message: str, network: bool):
        super().__init__(message)
        self.network = network


def download_clip(clip: DemoClip, dest_dir: str | os.PathLike | None = None,
                  timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """`clip` fetched from its URL into `dest_dir` (default: `cache_dir()`) and checked (size and
    SHA-256) before it is renamed into place; returns its path. Any failure raises a one-line
    `DownloadError` naming the URL and the reason, and leaves no partial file (an earlier file of
    that name is kept unless a good copy replaces it)."""
    dest = Path(dest_dir if dest_dir is not None else cache_dir()) / clip.name
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PocovidError(f"{path_text(dest.parent)}: cannot make the download folder "
                           f"({(e.strerror or type(e).__name__).lower()})") from None
    try:
        with atomic_path(dest) as tmp:
            h, n = hashlib.sha256(), 0
            with urlopen(clip.url, timeout=timeout) as resp, open(tmp, "wb") as fh:
                while chunk := resp.read(_CHUNK):
                    n += len(chunk)
                    if n > clip.size:
                        raise _Refused(f"more than the expected {clip.size} bytes")
                    h.update(chunk)
                    fh.write(chunk)
            if n != clip.size:
                raise _Refused(f"{n} bytes, expected {clip.size}")
            if h.hexdigest() != clip.sha256:
                raise _Refused(f"SHA-256 {h.hexdigest()[:12]}..., expected {clip.sha256[:12]}... (clips.csv)")
    except _Refused as e:
        reason, network = f"not the expected file: {e}; nothing kept", False
    except HTTPError as e:
        reason, network = f"HTTP {e.code} {e.reason}", False
    except URLError as e:
        network = True
        r = e.reason
        reason = f"no answer within {timeout:g} s" if isinstance(r, TimeoutError) else \
            f"{r.strerror or r}" if isinstance(r, OSError) else f"{r}"
        reason += "; offline?"
    except TimeoutError:
        reason, network = f"no answer within {timeout:g} s; offline?", True
    except (OSError, ValueError) as e:  # a dropped connection, a full disk, a malformed URL
        reason, network = f"{type(e).__name__}: {e}", isinstance(e, ConnectionError)
    else:
        return dest
    reason = " ".join(str(reason).split())  # one line
    raise DownloadError(f"{clip.url}: download failed ({reason})", network)


def find_demo_clips(data: str | os.PathLike | None = None, download: bool = True, *,
                    cwd: str | os.PathLike | None = None, timeout: float = DOWNLOAD_TIMEOUT_S,
                    log: Callable[[str], None] | None = None) -> DemoSearch:
    """Each clip of clips.csv from the first place that holds a good copy (see the module's text).
    `log` gets one line for every copy passed over, every download started and failed."""
    say = log or (lambda _s: None)
    out = DemoSearch()
    folders = search_folders(data, cwd)
    cache = cache_dir()
    for what, folder in folders:
        if what.startswith(("--data", "$")) and not folder.is_dir():
            say(f"{path_text(folder)} ({what}): not a folder")
        out.looked_in.append(path_text(folder))
    offline = False
    for clip in demo_clips():
        hit = None
        for what, folder in folders:
            for f in (folder / CLIP_SUBDIR / clip.name, folder / clip.name):
                if not f.is_file():
                    continue
                bad = check_copy(f, clip)
                if bad:
                    say(f"{path_text(f)}: not the demo clip ({bad}); passed over")
                    continue
                hit = (f, "download cache" if what == "cache" else f"{what}: {path_text(folder)}")
                break
            if hit:
                break
        if hit is None and download and offline:
            say(f"{clip.name}: not downloaded (no connection for the one before)")
        elif hit is None and download:
            say(f"{clip.name}: downloading {clip.size / 1e6:.1f} MB from {clip.url}")
            try:
                hit = (download_clip(clip, cache, timeout), f"downloaded from {SOURCE}")
            except PocovidError as e:
                say(f"error: {e}")
                out.download_failed = True
                offline = getattr(e, "network", False)  # no connection: the next download is not tried
        if hit is None:
            out.missing.append(clip)
        else:
            out.found.append((clip, *hit))
    return out
