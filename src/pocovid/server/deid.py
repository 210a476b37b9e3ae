"""DICOM de-identification before anything is stored: the DICOM PS3.15 Annex E Basic Application
Level Confidentiality Profile (Table E.1-1) with the Clean Pixel Data and Clean Descriptors options
(docs/server.md, "DICOM de-identification", says the same for users).

    from pocovid.server.deid import deidentify_dicom
    report = deidentify_dicom("in.dcm", "out.dcm")     # raises DeidError when it cannot be read

The table is not kept here: it is the one `dicom-anonymizer` (KitwareMedical, the `serve` extra)
generates from the standard's Table E.1-1 with its action codes (`basic_profile()` reads the
newest edition it ships). Its engine is not used (it only looks at the top level, keeps unknown
attributes and makes up dummy dates); this module applies the codes itself, to the data set and
every nested sequence item:

* private attributes, curves (50xx) and overlays (60xx), group lengths and any attribute the DICOM
  dictionary does not know: removed (no private attribute is retained as "safe");
* E.1-1 codes: X, X/Z, X/D, X/Z/D, X/Z/U* -> removed; Z, Z/D -> kept empty; D -> a dummy value
  of the VR ("ANONYMIZED", 19000101, 0, an empty sequence); U -> a new UID; K -> kept;
* not in the table: person names (PN) emptied; dates, times, date-times removed (not shifted);
  UIDs that the standard does not define replaced by new random UIDs, the same new UID for the
  same old one within the file; free text (LO, LT, SH, ST, UT, UC, UR, AE) removed unless listed
  in `SAFE_TEXT` (Manufacturer, model name, coded entries);
* the 128-byte preamble zeroed; the file meta rebuilt (SOP class/instance, transfer syntax,
  pydicom's implementation UID; no source/sender AE titles, no private meta);
* PatientIdentityRemoved = YES, DeidentificationMethod, DeidentificationMethodCodeSequence
  (113100 basic profile, 113105 clean descriptors, 113101 clean pixel data when pixels were
  blanked), LongitudinalTemporalInformationModified = REMOVED.

Pixels (Clean Pixel Data option, as far as it is automatic): every pixel outside the scan region
(`pocovid.region`, found on up to 32 frames of the cine) is blanked when any of them is brighter
than `DARK` in any frame (text burnt into the image lies there). Frames are decoded, blanked and
re-encoded one at a time: compressed input is stored JPEG-LS lossless (RLE lossless when
`pyjpegls` is missing), uncompressed input stays uncompressed; when nothing outside the region is
lit, or no region is found, the pixel data is copied as it came (compressed stays compressed).
Text drawn *inside* the scan region is never removed, so BurnedInAnnotation keeps the file's own
statement for reviewers.

Nothing is held in memory but the header, the frames sampled for the region (at most 32) and one
frame; the output is written beside `dst` and renamed into place (`pocovid.files.atomic_path`),
and temp files a killed process left there are removed (`remove_stale_temp_files`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pocovid.errors import PocovidError
from pocovid.files import atomic_path

#: the distribution whose Table E.1-1 is applied (the `serve` extra installs it)
TABLE_DISTRIBUTION = "dicom-anonymizer"
#: Table E.1-1 attributes the library's table lacks (all X in the standard's table)
SUPPLEMENT = {"PatientBirthDateInAlternativeCalendar": "X", "PatientDeathDateInAlternativeCalendar": "X",
              "PatientAlternativeCalendar": "X"}
#: free-text attributes (LO, SH, ...) that stay: the equipment's make and model and coded entries
#: (code value, scheme and its meaning, as in ViewCodeSequence); all other free text is removed
SAFE_TEXT = frozenset({"Manufacturer", "ManufacturerModelName", "CodeValue", "CodingSchemeDesignator",
                       "CodingSchemeVersion", "CodeMeaning", "DeidentificationMethod"})
_FREE_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UT", "UC", "UR", "AE"})
_EMPTY_STRING_VRS = frozenset({"PN", "DA", "TM", "DT", "LO", "SH", "CS", "AS", "LT", "ST", "UT", "UC", "UR", "IS",
                               "DS", "AE", "UI"})
_DUMMY = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0", "DS": "0",
          "CS": "ANONYMIZED", "UR": ""}
#: an 8-bit level (of 255) below which pixels outside the scan region count as black: nothing is
#: blanked (and the pixel data is kept as it came) when no such pixel is brighter in any frame
DARK = 24
#: temp files older than this (seconds) beside a de-identified file are left-overs of a killed run
STALE_AFTER_S = 3600.0

#: DeidentificationMethod (LO: at most 64 characters a value)
METHOD = ["pocovid: PS3.15 E.1-1 Basic Profile", "Clean Descriptors: free text removed",
          "dates and times removed (not shifted)", "UIDs replaced",
          "private, unknown, curve and overlay attributes removed"]
METHOD_PIXELS = "Clean Pixel Data: outside the scan region blanked"


class DeidError(PocovidError):
    """A DICOM file that cannot be read for de-identification (it is then not stored)."""


@dataclass
class DeidReport:
    removed: int = 0
    emptied: int = 0
    uids_replaced: int = 0
    private_removed: int = 0
    burned_in_annotation: str | None = None  # the file's own statement (YES / NO), if any
    pixels_masked: bool = False  # pixels outside the detected scan region were blanked
    pixels: str = "none"  # "none" (no pixel data), "kept" (copied as it came), "masked"
    transfer_syntax: str = ""  # of the stored file
    keywords: list[str] = field(default_factory=list)  # keywords removed / emptied (not their values)


# ------------------------------------------------------------------------------ the profile table

@dataclass(frozen=True)
class ProfileTable:
    source: str  # e.g. "dicom-anonymizer 2.1.0, dicomfields_2026c"
    actions: dict[int, str]  # tag -> E.1-1 action code (X, Z, D, U, X/Z, Z/D, X/D, X/Z/D, X/Z/U*)
    masked: tuple[tuple[int, int, int, int, str], ...]  # (group, element, group mask, element mask, code)


_CATEGORIES = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
               "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}


@functools.cache
def basic_profile() -> ProfileTable:
    """Table E.1-1's Basic Profile column, from the newest edition `dicom-anonymizer` ships, plus
    `SUPPLEMENT`. Raises DeidError when the library is not installed (the `serve` extra)."""
    import importlib
    import importlib.metadata
    import pkgutil

    try:
        dbs = importlib.import_module("dicomanonymizer.dicom_anonymization_databases")
    except ImportError:
        raise DeidError(f"DICOM de-identification needs {TABLE_DISTRIBUTION} (pip install 'pocovid[serve]')") from None
    editions = sorted(m.name for m in pkgutil.iter_modules(dbs.__path__) if m.name.startswith("dicomfields_"))
    if not editions:
        raise DeidError(f"{TABLE_DISTRIBUTION}: no Table E.1-1 found in the installed version")
    mod = importlib.import_module(f"{dbs.__name__}.{editions[-1]}")
    actions: dict[int, str] = {}
    masked = []
    for name, code in _CATEGORIES.items():
        for t in getattr(mod, name, []):
            if len(t) == 2:
                actions[(t[0] << 16) | t[1]] = code
            else:
                masked.append((t[0], t[1], t[2], t[3], code))
    from pydicom.datadict import tag_for_keyword

    for kw, code in SUPPLEMENT.items():
        tag = tag_for_keyword(kw)
        if tag is not None:
            actions.setdefault(int(tag), code)
    version = importlib.metadata.version(TABLE_DISTRIBUTION)
    return ProfileTable(f"{TABLE_DISTRIBUTION} {version}, {editions[-1]}", actions, tuple(masked))


def _is_standard_uid(value: str) -> bool:
    from pydicom.uid import UID

    try:
        u = UID(str(value).strip())
        return bool(u.name) and u.name != str(u)  # registered in the standard's UID dictionary
    except Exception:
        return False


def element_action(elem, table: ProfileTable | None = None) -> str | None:
    """What happens to a data element: an E.1-1 code (X, Z, D, U, K and the combined ones) or None
    (kept as it is; sequences are cleaned item by item either way)."""
    from pydicom.datadict import dictionary_has_tag

    table = table or basic_profile()
    tag = int(elem.tag)
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2 == 1 or element == 0:
        return "X"  # private attributes (and their creators), group lengths
    if (0x5000 <= group <= 0x50FF) or (0x6000 <= group <= 0x60FF):
        return "X"  # curves and overlays (their planes carry drawings and text)
    code = table.actions.get(tag)
    if code is not None:
        return code
    for g, e, gm, em, c in table.masked:
        if group & gm == g & gm and element & em == e & em:
            return c
    if not dictionary_has_tag(tag):
        return "X"  # an attribute the DICOM dictionary does not know: nothing says it is safe
    vr = elem.VR
    if vr == "PN":
        return "Z"
    if vr in ("DA", "TM", "DT"):
        return "X"
    if vr == "UI":
        return "U"
    if vr in _FREE_TEXT_VRS and elem.keyword not in SAFE_TEXT:
        return "X"
    if vr in ("UN", "OB or OW", "US or SS", "US or OW", "US or SS or OW"):
        return "X"  # a value whose meaning was lost on the way
    return None


class _Cleaner:
    """The profile applied to a data set and, recursively, its sequence items; one UID map for all
    of them (a UID replaced here is replaced by the same new UID everywhere in the file)."""

    def __init__(self, report: DeidReport, table: ProfileTable):
        self.report = report
        self.table = table
        self.uid_map: dict[str, str] = {}

    def new_uid(self, old: str) -> str:
        from pydicom.uid import generate_uid

        old = str(old).strip()
        if _is_standard_uid(old):
            return old
        if old not in self.uid_map:
            self.uid_map[old] = generate_uid()
            self.report.uids_replaced += 1
        return self.uid_map[old]

    def clean(self, d) -> None:
        for elem in list(d):
            code = element_action(elem, self.table)
            if elem.tag.is_private:
                self.report.private_removed += 1
            self.apply(d, elem, code)

    def _note(self, elem) -> None:
        self.report.keywords.append(elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})")

    def apply(self, d, elem, code: str | None) -> None:
        from pydicom.sequence import Sequence

        vr = elem.VR
        if code is not None and code.startswith("X"):
            del d[elem.tag]
            self.report.removed += 1
            self._note(elem)
        elif code in ("Z", "Z/D"):
            elem.value = Sequence([]) if vr == "SQ" else "" if vr in _EMPTY_STRING_VRS else None
            self.report.emptied += 1
            self._note(elem)
        elif code == "D":
            if vr == "SQ":
                elem.value = Sequence([])
            elif vr == "UI":
                elem.value = self.new_uid(str(elem.value or ""))
            elif vr in _EMPTY_STRING_VRS:
                elem.value = _DUMMY.get(vr, "ANONYMIZED")
            elif vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
                elem.value = 0
            else:
                del d[elem.tag]  # binary values: no meaningful dummy
            self.report.emptied += 1
            self._note(elem)
        elif code == "U" and vr == "UI":
            vals = [self.new_uid(v) for v in _values(elem.value)]
            elem.value = vals if len(vals) > 1 else vals[0] if vals else ""
        elif code == "U" and vr != "SQ":
            del d[elem.tag]
            self.report.removed += 1
            self._note(elem)
        elif vr == "SQ":
            for item in elem.value or []:
                self.clean(item)


def _values(v) -> list[str]:
    from pydicom.multival import MultiValue

    if v is None or v == "":
        return []
    if isinstance(v, (list, tuple, MultiValue)):
        return [str(x) for x in v]
    return [str(v)]


def deidentify_dataset(ds, report: DeidReport | None = None, table: ProfileTable | None = None) -> DeidReport:
    """De-identify the header of a pydicom Dataset in place (all but its pixel data; see the
    module docstring): the profile, the file meta rebuilt, the marks that say how."""
    report = report or DeidReport()
    table = table or basic_profile()
    if "BurnedInAnnotation" in ds:
        report.burned_in_annotation = str(ds.BurnedInAnnotation or "").strip().upper() or None
    _Cleaner(report, table).clean(ds)
    _rebuild_file_meta(ds)
    _mark_deidentified(ds, table)
    return report


def _rebuild_file_meta(ds) -> None:
    """A new file meta: SOP class and instance (following the new SOPInstanceUID), transfer syntax
    and pydicom's implementation; nothing of the sender (AE titles, private information)."""
    from pydicom import __version__ as pydicom_version
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    old = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    sop_class = ds.get("SOPClassUID") or old.get("MediaStorageSOPClassUID")
    if sop_class:
        meta.MediaStorageSOPClassUID = sop_class
    if not ds.get("SOPInstanceUID"):
        from pydicom.uid import generate_uid

        ds.SOPInstanceUID = generate_uid()
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = old.get("TransferSyntaxUID") or ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom_version}"[:16]
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128


def _mark_deidentified(ds, table: ProfileTable, pixels_cleaned: bool = False) -> None:
    """PatientIdentityRemoved, DeidentificationMethod and its codes (DCM 113100 basic profile,
    113105 clean descriptors, 113101 clean pixel data), LongitudinalTemporalInformationModified."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    codes = [("113100", "Basic Application Confidentiality Profile"), ("113105", "Clean Descriptors Option")]
    if pixels_cleaned:
        codes.append(("113101", "Clean Pixel Data Option"))
    items = []
    for value, meaning in codes:
        code = Dataset()
        code.CodeValue = value
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = meaning
        items.append(code)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [*METHOD, f"table: {table.source}"[:64]] + ([METHOD_PIXELS] if pixels_cleaned else [])
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = "REMOVED"


# ------------------------------------------------------------------------------ the file

def deidentify_dicom(src: str | os.PathLike, dst: str | os.PathLike, *, mask_pixels: bool = True) -> DeidReport:
    """Read the DICOM file `src`, de-identify it, write it to `dst` (not the same path).

    Memory stays bounded (one frame at a time, see the module docstring); `dst` appears whole or
    not at all. Raises `DeidError` (one line, no tag values) when `src` is not a readable DICOM
    file or the result cannot be written."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    src, dst = Path(src), Path(dst)
    table = basic_profile()
    remove_stale_temp_files(dst.parent)
    with _quiet_pydicom():  # its validation warnings quote tag values: they must not reach the logs
        try:
            ds = pydicom.dcmread(src, defer_size=4096)
            pixel_raw = ds.get_item(0x7FE00010, keep_deferred=True) if 0x7FE00010 in ds else None
            if pixel_raw is not None:
                del ds[0x7FE00010]  # never read whole: `_Pixels` streams it
            elif len(ds) == 0 or "Rows" in ds:  # pydicom drops a cut encapsulated PixelData (or all)
                raise DeidError("DICOM pixel data is missing or cut short")
        except DeidError:
            raise
        except InvalidDicomError:
            raise DeidError("not a readable DICOM file") from None
        except Exception as e:  # truncated headers, bad lengths, ...
            raise DeidError(f"DICOM header cannot be read ({type(e).__name__})") from None
        try:
            report = deidentify_dataset(ds, table=table)
        except DeidError:
            raise
        except Exception as e:
            raise DeidError(f"DICOM header cannot be de-identified ({type(e).__name__})") from None
        with contextlib.ExitStack() as stack:
            try:
                pixels = _Pixels(ds, src, pixel_raw, dst.parent, stack)
                report.pixels = pixels.store(mask=mask_pixels)
            except DeidError:
                raise
            except Exception as e:
                raise DeidError(f"DICOM pixel data cannot be read ({type(e).__name__})") from None
            report.pixels_masked = report.pixels == "masked"
            if report.pixels_masked:
                _mark_deidentified(ds, table, pixels_cleaned=True)
            report.transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
            try:
                with atomic_path(dst) as tmp:
                    ds.save_as(tmp, enforce_file_format=True)
            except Exception as e:
                raise DeidError(f"de-identified DICOM cannot be written ({type(e).__name__})") from None
    return report


class _Pixels:
    """The pixel data of one file, streamed: kept byte for byte, or blanked outside the scan region
    frame by frame into a temp file that becomes the stored PixelData (a buffered value)."""

    def __init__(self, ds, src: Path, raw, folder: Path, stack: contextlib.ExitStack):
        self.ds, self.src, self.raw, self.folder, self.stack = ds, src, raw, folder, stack
        self.cut = False  # the pixel data ended before its last frame

    def store(self, mask: bool) -> str:
        ds = self.ds
        if self.raw is None:
            return "none"
        ts = ds.file_meta.TransferSyntaxUID
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        n = max(1, int(ds.get("NumberOfFrames") or 1))
        if mask and rows >= 16 and cols >= 16 and ts != "1.2.840.10008.1.2.2":  # not big-endian (retired)
            region = self._region(n)
            if region is not None and self._lit_outside(region.mask, n):
                self._write_masked(region.mask, n)
                return "masked"
        self._keep()
        return "kept"

    # -- keeping the pixel data as it came
    def _keep(self) -> None:
        """PixelData copied from `src` as a window of the file (never read whole into memory)."""
        from pydicom.dataelem import DataElement

        if getattr(self.raw, "value_tell", None) is None:  # already read (not deferred)
            self.ds[0x7FE00010] = DataElement(0x7FE00010, self.raw.VR, self.raw.value)
            self.ds[0x7FE00010].is_undefined_length = bool(self.raw.is_undefined_length)
            return
        fh = self.stack.enter_context(open(self.src, "rb"))
        start = int(self.raw.value_tell)
        length = int(self.raw.length)
        undefined = length == 0xFFFFFFFF
        if undefined:
            length = _encapsulated_length(fh, start, self.ds.file_meta.TransferSyntaxUID.is_little_endian)
        buf = io.BufferedReader(_FileWindow(fh, start, length))
        elem = DataElement(0x7FE00010, self.raw.VR if self.raw.VR in ("OB", "OW") else "OB", buf)
        elem.is_undefined_length = undefined
        self.ds[0x7FE00010] = elem

    # -- finding the scan region and whether anything outside it shows
    def _frames(self, indices=None):
        """Decoded frames in order; a cut file (a truncated cine) ends at its last whole frame."""
        from pydicom.pixels import iter_pixels

        it = iter_pixels(self.src, indices=indices)
        while True:
            try:
                frame = next(it)
            except StopIteration:
                return
            except Exception:
                self.cut = True
                return
            yield frame

    def _region(self, n: int):
        from pocovid.media import to_rgb8
        from pocovid.region import detect_scan_region

        step = max(1, n // 32)
        sample = [to_rgb8(f) for f in self._frames(range(0, n, step))][:32]
        if not sample:
            raise DeidError("DICOM pixel data cannot be decoded")
        region = detect_scan_region(sample)
        return None if region.is_full else region

    def _lit_outside(self, mask: np.ndarray, n: int) -> bool:
        from pocovid.media import to_rgb8

        outside = ~mask
        return any(int(to_rgb8(f)[outside].max(initial=0)) > DARK for f in self._frames())

    # -- writing the blanked frames
    def _write_masked(self, mask: np.ndarray, n: int) -> None:
        """Each frame decoded, blanked outside `mask`, re-encoded (compressed input: JPEG-LS or RLE
        lossless) or written as it is (uncompressed input), into a temp file beside `dst`."""
        from pydicom.dataelem import DataElement
        from pydicom.uid import ExplicitVRLittleEndian

        ds = self.ds
        ts = ds.file_meta.TransferSyntaxUID
        encoder = _lossless_encoder() if ts.is_compressed else None
        fd, name = tempfile.mkstemp(prefix=".pixels.", suffix=".tmp", dir=self.folder)
        tmp = Path(name)
        self.stack.callback(lambda: tmp.unlink(missing_ok=True))
        out = self.stack.enter_context(os.fdopen(fd, "w+b"))
        if encoder is not None:
            out.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))  # an empty basic offset table
        colour = None
        written = 0
        for f in self._frames():
            written += 1
            colour = f.ndim == 3
            frame = np.where(mask[..., None] if colour else mask, f, 0).astype(f.dtype, copy=False)
            if encoder is None:
                out.write(np.ascontiguousarray(frame).astype(frame.dtype.newbyteorder("<"), copy=False).tobytes())
                continue
            data = encoder.encode(frame, **_encoding_kwargs(ds, frame))
            if len(data) % 2:
                data += b"\x00"
            out.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(data)))
            out.write(data)
        if encoder is None and out.tell() % 2:
            out.write(b"\x00")
        if written == 0:
            raise DeidError("DICOM pixel data cannot be decoded")
        if written < n:  # a cut cine: its whole frames are stored, and it says how many
            ds.NumberOfFrames = written
        out.flush()
        out.seek(0)
        if colour:  # decoded to RGB, interleaved
            ds.PhotometricInterpretation = "RGB"
            ds.PlanarConfiguration = 0
        if ts.is_compressed and "LossyImageCompression" not in ds and _is_lossy(ts):
            ds.LossyImageCompression = "01"  # the pixels did go through a lossy codec once
        ds.file_meta.TransferSyntaxUID = encoder.UID if encoder is not None else ExplicitVRLittleEndian
        bits = int(ds.get("BitsAllocated") or 8)
        elem = DataElement(0x7FE00010, "OB" if encoder is not None or bits <= 8 else "OW", out)
        elem.is_undefined_length = encoder is not None
        ds[0x7FE00010] = elem


def _encoding_kwargs(ds, frame: np.ndarray) -> dict:
    spp = 3 if frame.ndim == 3 else 1
    bits = int(ds.get("BitsAllocated") or 8)
    return {"rows": frame.shape[0], "columns": frame.shape[1], "samples_per_pixel": spp,
            "number_of_frames": 1, "bits_allocated": bits, "bits_stored": int(ds.get("BitsStored") or bits),
            "pixel_representation": int(ds.get("PixelRepresentation") or 0),
            "photometric_interpretation": "RGB" if spp == 3 else str(ds.get("PhotometricInterpretation") or
                                                                        "MONOCHROME2"),
            "planar_configuration": 0}


def _is_lossy(ts) -> bool:
    from pydicom import uid

    lossless = {uid.RLELossless, uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEG2000Lossless,
                uid.DeflatedExplicitVRLittleEndian}
    return ts not in lossless


def _lossless_encoder():
    """JPEG-LS lossless when pyjpegls is installed (the `serve` extra), else RLE lossless (pydicom's
    own encoder, always there)."""
    from pydicom.pixels.encoders import JPEGLSLosslessEncoder, RLELosslessEncoder

    return JPEGLSLosslessEncoder if JPEGLSLosslessEncoder.is_available else RLELosslessEncoder


def _encapsulated_length(fh, start: int, little: bool = True) -> int:
    """Bytes of an encapsulated PixelData value from `start` up to (not including) its sequence
    delimiter, found by walking the item headers (their data is skipped, not read). A cut file
    (no delimiter): up to its last whole item (pydicom writes the delimiter)."""
    fmt = "<HHI" if little else ">HHI"
    pos = last = start
    size = os.fstat(fh.fileno()).st_size
    while pos + 8 <= size:
        fh.seek(pos)
        group, elem, length = struct.unpack(fmt, fh.read(8))
        if (group, elem) == (0xFFFE, 0xE0DD):
            return pos - start
        if (group, elem) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF or pos + 8 + length > size:
            break
        pos += 8 + length
        last = pos
    if last == start:
        raise DeidError("DICOM pixel data: no encapsulated fragment")
    return last - start


class _FileWindow(io.RawIOBase):
    """Bytes [start, start + length) of an open file, as a seekable read-only stream."""

    def __init__(self, fh, start: int, length: int):
        self.fh, self.start, self.length, self.pos = fh, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.length}[whence]
        self.pos = max(0, min(self.length, base + offset))
        return self.pos

    def readinto(self, b) -> int:
        n = min(len(b), self.length - self.pos)
        if n <= 0:
            return 0
        self.fh.seek(self.start + self.pos)
        data = self.fh.read(n)
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


# ------------------------------------------------------------------------------ left-overs, settings

_TEMP_RE = re.compile(r"^\..+\.tmp$|^.+\.deid$")


def remove_stale_temp_files(folder: str | os.PathLike, older_than_s: float = STALE_AFTER_S) -> int:
    """Remove the temp files a killed de-identification left in `folder` (hidden `.NAME.*.tmp`
    beside the target, `.pixels.*.tmp`, `*.deid`) that are older than `older_than_s`; returns how
    many. At server start (nothing running) call it with `older_than_s=0`."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    now = time.time()
    n = 0
    for p in folder.iterdir():
        if not _TEMP_RE.match(p.name):
            continue
        with contextlib.suppress(OSError):
            if p.is_file() and not p.is_symlink() and now - p.stat().st_mtime >= older_than_s:
                p.unlink()
                n += 1
    return n


_SETTINGS_LOCK = threading.Lock()
_active = 0
_saved: tuple | None = None


@contextlib.contextmanager
def _quiet_pydicom():
    """pydicom's value validation off (it warns and logs with the offending values) while any file
    is de-identified. The settings are process-wide: the first de-identification to start turns it
    off, the last to end restores it; the lock guards that count only, never the work."""
    global _active, _saved
    from pydicom import config

    with _SETTINGS_LOCK:
        if _active == 0:
            _saved = config.settings.reading_validation_mode, config.settings.writing_validation_mode
            config.settings.reading_validation_mode = config.IGNORE
            config.settings.writing_validation_mode = config.IGNORE
        _active += 1
    try:
        yield
    finally:
        with _SETTINGS_LOCK:
            _active -= 1
            if _active == 0 and _saved is not None:
                config.settings.reading_validation_mode, config.settings.writing_validation_mode = _saved
                _saved = None
