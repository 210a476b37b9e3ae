"""DICOM de-identification (pocovid.server.deid) checked against DICOM PS3.15 Table E.1-1, the
pixel path (bounded memory, lossless, compressed data kept when untouched), no orphan file after a
kill, and contributor text neutralised in the CSV export and `pocovid contributions list`."""

from __future__ import annotations

import csv
import importlib
import os
import pkgutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
dbs = pytest.importorskip("dicomanonymizer.dicom_anonymization_databases",
                          reason="de-identification needs the 'serve' extra (dicom-anonymizer)")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.datadict import dictionary_VR, dictionary_has_tag, keyword_for_tag, tag_for_keyword  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402

from pocovid.server import deid  # noqa: E402
from pocovid.server.deid import deidentify_dicom, remove_stale_temp_files  # noqa: E402

MARK = "SECRET"

_CATEGORY = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
             "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}


def standard_table() -> dict[int, str]:
    """Table E.1-1 (Basic Profile column) as the library generated it from the standard, read here
    independently of pocovid's code: tag -> action code."""
    newest = sorted(m.name for m in pkgutil.iter_modules(dbs.__path__) if m.name.startswith("dicomfields_"))[-1]
    mod = importlib.import_module(f"{dbs.__name__}.{newest}")
    out = {}
    for name, code in _CATEGORY.items():
        for t in getattr(mod, name):
            if len(t) == 2:
                out[(t[0] << 16) | t[1]] = code
    return out


def _value(vr: str, i: int, nested: bool = True):
    """A value of `vr` that carries the marker wherever the VR can hold text."""
    text = f"{MARK}{i:04d}"
    if vr == "PN":
        return f"{text}^DOE"
    if vr in ("LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE"):
        return text
    if vr == "UR":
        return f"http://{text.lower()}.example"
    if vr == "DA":
        return "19710203"
    if vr == "TM":
        return "101112"
    if vr == "DT":
        return "19710203101112"
    if vr == "AS":
        return "042Y"
    if vr in ("DS", "IS"):
        return "42"
    if vr == "UI":
        return f"1.2.826.0.1.99.{i}"
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return 42
    if vr in ("FL", "FD"):
        return 4.5
    if vr == "AT":
        return 0x00100010
    if vr == "SQ":
        item = Dataset()
        item.PatientName = f"{MARK}N{i:04d}^NESTED"
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.98.{i}"
        item.ImageComments = f"{MARK}C{i:04d}"
        return Sequence([item])
    return f"{text}xx".encode()  # OB, OW, UN, OF, OD, OL, OV: 12 bytes


def _vr(tag: int) -> str:
    if not dictionary_has_tag(tag):
        return "LO"
    return dictionary_VR(tag).split(" or ")[0]


def _carrier(path: Path) -> tuple[Dataset, dict[int, str]]:
    """A DICOM file carrying every attribute of Table E.1-1 (groups 0000 and 0002 aside), plus
    private, unknown and nested free text, a file meta with sender fields and a marked preamble."""
    table = {t: c for t, c in standard_table().items() if t >> 16 not in (0x0000, 0x0002)}
    ds = Dataset()
    for i, (tag, _code) in enumerate(sorted(table.items())):
        ds.add_new(tag, _vr(tag), _value(_vr(tag), i))
    shared_uid = "1.2.826.0.1.77.1"
    ds.SOPClassUID = pydicom.uid.UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = shared_uid
    ds.Modality = "US"
    ds.Manufacturer = "Acme"
    ds.add_new(0x00091010, "LO", f"{MARK}-PRIVATE-NO-CREATOR")
    block = ds.private_block(0x0041, "ACME SCANNER", create=True)
    block.add_new(0x10, "LO", f"{MARK}-PRIVATE")
    ds.add_new(0x77770010, "LO", f"{MARK}-UNKNOWN-PUBLIC")
    ds.add_new(0x60000022, "LO", f"{MARK}-OVERLAY")
    region = Dataset()  # a sequence the profile keeps, carrying free text it must not keep
    region.RegionSpatialFormat = 1
    region.PatientName = f"{MARK}-NESTED^NAME"
    region.add_new(0x0040A160, "UT", f"{MARK}-NESTED-TEXT")  # TextValue
    region.add_new(0x00204000, "LT", f"{MARK}-NESTED-COMMENT")  # ImageComments
    region.add_new(0x00180010, "LO", f"{MARK}-NESTED-AGENT")  # ContrastBolusAgent
    region.add_new(0x77770012, "LO", f"{MARK}-NESTED-UNKNOWN")
    region.add_new(0x00290010, "LO", f"{MARK}-NESTED-PRIVATE")
    region.add_new(0x00081155, "UI", shared_uid)  # ReferencedSOPInstanceUID: the same file's UID
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D3000", "SRT", "Chest"
    region.AnatomicRegionSequence = Sequence([code])
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 1, 8, 8, 7
    ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
    ds.PixelData = bytes(range(64))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = shared_uid
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = f"{MARK}AE"
    ds.preamble = (MARK.encode() + b"-PREAMBLE").ljust(128, b"#")
    ds.save_as(path, enforce_file_format=True)
    return ds, table


@pytest.fixture()
def quiet(monkeypatch):
    from pydicom import config

    monkeypatch.setattr(config.settings, "writing_validation_mode", config.IGNORE)
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.IGNORE)


def test_every_e11_attribute_is_handled_as_the_table_says(tmp_path, quiet):
    src, dst = tmp_path / "id.dcm", tmp_path / "out" / "clean.dcm"
    before, table = _carrier(src)
    raw = src.read_bytes()
    assert len(table) > 600 and raw.count(MARK.encode()) > 400  # the file does carry them
    rep = deidentify_dicom(src, dst)
    out = dst.read_bytes()
    assert MARK.encode() not in out and b"1.2.826.0.1.99." not in out and b"1.2.826.0.1.77.1" not in out
    assert out[:128] == b"\x00" * 128 and out[128:132] == b"DICM"
    ds = pydicom.dcmread(dst)
    wrong = []
    for tag, code in table.items():
        name = keyword_for_tag(tag) or f"{tag:08X}"
        orig = before[tag].value
        if code.startswith("X"):
            ok = tag not in ds
        elif code in ("Z", "Z/D"):
            ok = tag in ds and (ds[tag].value in ("", None, b"") or (ds[tag].VR == "SQ" and len(ds[tag].value) == 0))
        elif code == "D":
            ok = tag not in ds or (ds[tag].value != orig and MARK not in str(ds[tag].value))
        else:  # U
            ok = tag not in ds or (ds[tag].VR == "UI" and ds[tag].value != orig)
        if not ok:
            wrong.append(f"{name} ({code})")
    assert wrong == []
    # what the issue found kept, by name
    assert ds.PlacerOrderNumberImagingServiceRequest == ""
    assert ds.ContrastBolusAgent in ("", None) and ds.PatientID == "" and ds.PatientName == ""
    for kw in ("PatientInstitutionResidence", "PatientBirthDateInAlternativeCalendar",
               "PatientDeathDateInAlternativeCalendar", "ScheduledProcedureStepID"):
        assert kw not in ds, kw
    for kw in ("ClinicalTrialSubjectID", "ClinicalTrialSiteID", "ClinicalTrialSponsorName", "ClinicalTrialSiteName"):
        assert kw not in ds or MARK not in str(ds.data_element(kw).value), kw
    # private, unknown, overlays, nested free text
    assert not any(e.tag.is_private for e in ds.iterall())
    assert 0x77770010 not in ds and 0x60000022 not in ds
    region = ds.SequenceOfUltrasoundRegions[0]
    assert region.RegionSpatialFormat == 1 and region.PatientName == ""
    for tag in (0x0040A160, 0x00204000, 0x77770012, 0x00290010):
        assert tag not in region
    assert region.AnatomicRegionSequence[0].CodeMeaning == "Chest"  # coded entries stay
    assert region.ReferencedSOPInstanceUID == ds.SOPInstanceUID != "1.2.826.0.1.77.1"  # consistent
    # file meta rebuilt, marks set
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert ds.SOPClassUID == pydicom.uid.UltrasoundMultiFrameImageStorage and ds.Manufacturer == "Acme"
    assert ds.PatientIdentityRemoved == "YES" and ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113105"]
    assert any("dicom-anonymizer" in m for m in ds.DeidentificationMethod)
    assert ds.PixelData == bytes(range(64)) and rep.pixels == "kept"


def test_profile_is_the_libraries_table_and_what_is_not_listed_is_removed(quiet):
    table = deid.basic_profile()
    assert "dicom-anonymizer" in table.source and "dicomfields_" in table.source
    for tag, code in standard_table().items():
        assert table.actions[tag] == code
    assert table.actions[tag_for_keyword("PatientBirthDateInAlternativeCalendar")] == "X"  # supplement
    e = pydicom.DataElement
    assert deid.element_action(e(0x77770010, "LO", "x")) == "X"  # unknown public
    assert deid.element_action(e(0x00091010, "LO", "x")) == "X"  # private
    assert deid.element_action(e(0x00081030, "LO", "x")) == "X"  # StudyDescription (in the table)
    assert deid.element_action(e(0x00180015, "CS", "CHEST")) is None  # BodyPartExamined: kept
    assert deid.element_action(e(0x00080070, "LO", "Acme")) is None  # Manufacturer: kept


def _encapsulated_frames(path: Path) -> list[bytes]:
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(path)
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))


def test_untouched_compressed_pixels_are_kept_byte_for_byte(tmp_path):
    from pocovid.phantom import write_phantom

    src = tmp_path / "plain.dcm"
    write_phantom(src, width=256, height=208, n_frames=12, overlays=False, seed=2, compressed=True)
    rep = deidentify_dicom(src, tmp_path / "clean.dcm")
    assert rep.pixels == "kept" and not rep.pixels_masked
    assert rep.transfer_syntax == str(pydicom.dcmread(src).file_meta.TransferSyntaxUID)
    assert _encapsulated_frames(tmp_path / "clean.dcm") == _encapsulated_frames(src)


def test_blanked_compressed_pixels_are_stored_lossless(tmp_path):
    from pocovid.phantom import write_phantom

    src = tmp_path / "screen.dcm"
    ph = write_phantom(src, width=256, height=208, n_frames=12, overlays=True, seed=4, compressed=True)
    rep = deidentify_dicom(src, tmp_path / "clean.dcm")
    assert rep.pixels == "masked"
    ds = pydicom.dcmread(tmp_path / "clean.dcm")
    assert ds.file_meta.TransferSyntaxUID in (pydicom.uid.JPEGLSLossless, pydicom.uid.RLELossless)
    assert "113101" in [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]
    px = ds.pixel_array
    decoded = pydicom.dcmread(src).pixel_array  # the pixels inside the region are the decoded input, exactly
    kept = px.any(axis=(0, 3))  # the pixels the detected region kept: exactly as decoded, the rest 0
    assert np.array_equal(px[:, kept], decoded[:, kept]) and not px[:, ~kept].any()
    inside = ph.mask & ~ph.overlay_mask
    assert kept[inside].mean() > 0.95 and not (kept & ph.overlay_mask & ~ph.mask).any()


_MEASURE = """
import resource, sys
from pocovid.server import deid
from pocovid.region import detect_scan_region
import pydicom.pixels
deid.basic_profile()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rep = deid.deidentify_dicom(sys.argv[1], sys.argv[2])
print(rep.pixels, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""


@pytest.mark.slow
def test_jpeg_dicom_deid_is_bounded_in_memory_and_size(tmp_path):
    from pocovid.phantom import write_phantom

    src = tmp_path / "long.dcm"
    n, h, w = 200, 480, 640
    write_phantom(src, width=w, height=h, n_frames=n, overlays=True, seed=1, compressed=True)
    raw = n * h * w * 3
    res = subprocess.run([sys.executable, "-c", _MEASURE, str(src), str(tmp_path / "clean.dcm")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    pixels, grown = res.stdout.split()
    stored = (tmp_path / "clean.dcm").stat().st_size
    assert pixels == "masked"
    assert int(grown) < 0.5 * raw  # not the whole decoded cine (was: decoded, copied, masked, copied)
    assert stored < 0.25 * raw and stored < 5 * src.stat().st_size  # lossless compressed, not raw


_SLOW_CHILD = """
import sys, time
from pocovid.server import deid
real = deid._lossless_encoder()
class Slow:
    UID = real.UID
    @staticmethod
    def encode(*a, **k):
        time.sleep(0.5)
        return real.encode(*a, **k)
deid._lossless_encoder = lambda: Slow
deid.deidentify_dicom(sys.argv[1], sys.argv[2])
"""


def test_a_kill_during_deid_leaves_no_stored_file_and_its_temp_files_are_cleaned(tmp_path):
    from pocovid.phantom import write_phantom

    src, folder = tmp_path / "in" / "screen.dcm", tmp_path / "uploads"
    src.parent.mkdir()
    folder.mkdir()
    write_phantom(src, width=256, height=208, n_frames=30, overlays=True, seed=4, compressed=True)
    dst = folder / "0123456789abcdef.dcm"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CHILD, str(src), str(dst)])
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(p.name.endswith(".tmp") for p in folder.iterdir()):
            assert proc.poll() is None, "the child ended before it was killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    left = [p.name for p in folder.iterdir()]
    assert not dst.exists() and left and all(n.startswith(".") and n.endswith(".tmp") for n in left)
    assert remove_stale_temp_files(folder, older_than_s=3600) == 0  # a fresh one may still be in use
    for p in folder.iterdir():  # an hour later, the next de-identification into the folder clears them
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    (folder / "other.dcm").write_bytes(b"kept")  # not a temp file: never touched
    deidentify_dicom(src, folder / "fedcba9876543210.dcm")
    assert sorted(p.name for p in folder.iterdir()) == ["fedcba9876543210.dcm", "other.dcm"]


# ------------------------------------------------------------------------------ contributor text

HOSTILE = ["=HYPERLINK(\"http://x.invalid\",\"click\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)",
           "\tTAB", "\rCR"]


def test_csv_cells_never_start_a_formula():
    from pocovid.server.contributions import csv_cell

    for s in HOSTILE:
        assert csv_cell(s) == "'" + s
    assert csv_cell("-1") == "-1" and csv_cell("3") == "3" and csv_cell(None) == "" and csv_cell("Phantom") == "Phantom"


def test_terminal_text_is_escaped():
    from pocovid.server.contributions import FormError, parse_form, printable

    s = printable("ok\x1b]0;pwned\x07\x1b[2J\u202egnp.exe\ttab\nline")
    assert "\x1b" not in s and "\x07" not in s and "\u202e" not in s and "\t" not in s and "\n" not in s
    assert "\\x1b" in s and s.startswith("ok")
    with pytest.raises(FormError, match="source"):
        parse_form({"diagnosis": "covid", "source": "Hosp\x1b[31m", "license": "CC BY 4.0", "consent": "true"})


def _stored_contributions(tmp_path, sources):
    from pocovid.server.db import Database
    from pocovid.server.storage import Storage

    storage = Storage(tmp_path / "data")
    db = Database(storage.db_path)
    for i, source in enumerate(sources):
        cid = f"{i:016x}"
        (storage.contributions / f"{cid}.mp4").write_bytes(b"x")
        db.add_contribution({"id": cid, "kind": "video", "format": "mp4", "ext": ".mp4", "size": 1,
                             "file": f"contributions/{cid}.mp4", "deidentified": 0, "diagnosis": "covid",
                             "probe": "convex", "source": source, "license": "CC BY 4.0", "findings": {},
                             "status": "accepted"})
    return db, storage


def test_export_and_list_neutralise_contributor_text(tmp_path):
    from typer.testing import CliRunner

    from pocovid.cli import app
    from pocovid.server.contributions import export_contributions

    db, storage = _stored_contributions(tmp_path, [*HOSTILE, "Hosp\x1b]0;pwned\x07\x1b[2J"])
    try:
        export_contributions(db, storage, tmp_path / "out")
    finally:
        db.close()
    with open(tmp_path / "out" / "dataset_metadata.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(HOSTILE) + 1
    for r in rows:
        for v in r.values():
            assert not v or v[0] not in "=+-@\t\r", v
        assert r["Patient ID / Name"].startswith("contrib-")
    res = CliRunner().invoke(app, ["contributions", "list", "--data-dir", str(tmp_path / "data")])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\x07" not in res.output and "\r" not in res.output
    assert "Hosp\\x1b]0;pwned" in res.output and f"{len(HOSTILE) + 1} contribution(s)" in res.output


def test_a_cut_jpeg_dicom_is_refused_with_one_line_and_nothing_stored(tmp_path):
    from pocovid.phantom import write_phantom
    from pocovid.server.deid import DeidError

    src = tmp_path / "in.dcm"
    write_phantom(src, width=128, height=96, n_frames=8, overlays=True, seed=3, compressed=True)
    data = src.read_bytes()
    src.write_bytes(data[: int(len(data) * 0.95)])
    (tmp_path / "out").mkdir()
    with warnings.catch_warnings(), pytest.raises(DeidError, match="cut short"):
        warnings.simplefilter("ignore")  # pydicom's "end of file reached before delimiter"
        deidentify_dicom(src, tmp_path / "out" / "x.dcm")
    assert list((tmp_path / "out").iterdir()) == []
