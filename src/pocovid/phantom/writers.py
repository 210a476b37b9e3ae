"""Writing frames to the real file formats lung-ultrasound recordings come in.

- `write_video` (`pocovid.media.write_video`, re-exported): .mp4 / .m4v / .mov / .mkv (H.264,
  yuv420p), .avi, .mpeg / .mpg, .webm, .wmv, .gif. All through `pocovid.media.VideoWriter`.
- `write_image`: .png / .jpg / .jpeg / .bmp / .tif / .tiff (8-bit RGB, RGBA, grey, 16-bit grey).
- `write_dicom`: a DICOM Part 10 ultrasound file, single- or multi-frame, uncompressed (Explicit VR
  Little Endian) or JPEG Baseline, RGB or MONOCHROME2, with fake patient data in the header.
- `write_phantom`: render a `PhantomConfig` and write it in the format the extension names.

Frames are RGB uint8 (T, H, W, 3) arrays (grey (T, H, W) is accepted and written as grey RGB).
"""

from __future__ import annotations

import io
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from pocovid.media.writer import VIDEO_FORMATS, as_rgb_stack, write_video
from pocovid.phantom.generator import Phantom, PhantomConfig, make_phantom

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
DICOM_FORMATS = {".dcm", ".dicom"}

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"


# --------------------------------------------------------------------------------------------
# still images


def write_image(path, frame, *, quality: int = 95) -> None:
    """Write one image: RGB (H, W, 3), RGBA (H, W, 4), grey (H, W) uint8, or 16-bit grey (H, W) uint16.

    The format comes from the extension (any case): .png .jpg .jpeg .bmp .tif .tiff.
    """
    from PIL import Image

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_FORMATS:
        raise ValueError(f"{path}: not an image extension (supported: {' '.join(sorted(IMAGE_FORMATS))})")
    fmt = IMAGE_FORMATS[ext]
    a = np.asarray(frame)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2 and a.dtype == np.uint16:
        if fmt not in ("PNG", "TIFF"):
            raise ValueError(f"{path}: 16-bit images can be written as PNG or TIFF only")
        im = Image.fromarray(a)  # mode I;16
    elif a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        if a.ndim == 3 and a.shape[2] == 4 and fmt == "JPEG":
            raise ValueError(f"{path}: JPEG has no alpha channel; pass an RGB frame")
        im = Image.fromarray(np.ascontiguousarray(a))
    else:
        raise ValueError(f"{path}: unsupported frame {a.shape} {a.dtype} (want uint8 grey/RGB/RGBA or uint16 grey)")
    kw = {"quality": int(quality), "subsampling": 0} if fmt == "JPEG" else {}
    im.save(path, format=fmt, **kw)


# --------------------------------------------------------------------------------------------
# DICOM


def _dicom_stack(frames, monochrome: bool) -> np.ndarray:
    a = np.asarray(frames)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4)):
        a = a[None]  # one frame (grey, or RGB(A))
    stack = as_rgb_stack(a)
    if monochrome:
        # ITU-R BT.601 luma, as scanners store grey
        g = stack.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(g), 0, 255).astype(np.uint8)
    return stack


def _jpeg_frame(a: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # 4:2:2 chroma subsampling, as YBR_FULL_422 promises; grey frames are single-component JPEG
    Image.fromarray(a).save(buf, format="JPEG", quality=quality, subsampling=1, optimize=False)
    return buf.getvalue()


def write_dicom(path, frames, fps, *, compressed: bool = False, patient_name="PHANTOM^TEST",
                patient_id="PH0001", monochrome: bool = False, quality: int = 92,
                region_box: tuple[int, int, int, int] | None = None, cm_per_pixel: float | None = None,
                **extra_tags) -> None:
    """Write a DICOM Part 10 ultrasound file.

    Several frames: US Multi-frame Image Storage with NumberOfFrames, CineRate, FrameTime (ms) and
    FrameIncrementPointer; one frame: US Image Storage. 8-bit RGB (or MONOCHROME2 with
    `monochrome=True`). `compressed=True` stores each frame as JPEG Baseline (YBR_FULL_422 for
    colour), otherwise Explicit VR Little Endian. The header carries fake but complete patient,
    study and institution data so de-identification has something to remove; `extra_tags` sets
    (or, with None, removes) any further DICOM keyword. `region_box` (x0, y0, x1, y1; x1/y1
    exclusive) adds a SequenceOfUltrasoundRegions item for the scan sector.
    """
    import pydicom
    from pydicom.uid import generate_uid

    path = Path(path)
    stack = _dicom_stack(frames, monochrome)
    T, H, W = stack.shape[:3]
    fps = float(fps)
    if not fps > 0:
        raise ValueError(f"fps must be positive; got {fps}")
    sop_class = US_MULTIFRAME_IMAGE_STORAGE if T > 1 else US_IMAGE_STORAGE
    # UIDs derived from the content rather than random: the same call writes the same file
    entropy = [str(patient_id), str(patient_name), path.name]
    sop_uid = generate_uid(entropy_srcs=entropy + ["instance", str(T), str(H), str(W), str(compressed)])
    ds = _dicom_header(sop_class, sop_uid, entropy, compressed)
    _fake_patient(ds, patient_name, patient_id)
    _fake_study(ds)
    _image_pixel_module(ds, H, W, monochrome, compressed)
    if T > 1:
        _cine_module(ds, T, fps)
    if region_box is not None:
        ds.SequenceOfUltrasoundRegions = _ultrasound_regions(region_box, cm_per_pixel)
    _set_pixel_data(ds, stack, compressed, quality)
    _set_extra_tags(ds, extra_tags)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _dicom_header(sop_class: str, sop_uid: str, entropy: list[str], compressed: bool):
    """A dataset with its file meta information and the SOP common / UID elements."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    study_uid = generate_uid(entropy_srcs=entropy + ["study"])
    series_uid = generate_uid(entropy_srcs=entropy + ["series"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit if compressed else ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "POCOVID_PHANTOM"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=entropy + ["frame of reference"])
    return ds


def _fake_patient(ds, patient_name, patient_id) -> None:
    """Patient module, all fake, but every field a de-identifier should remove is there."""
    ds.PatientName = str(patient_name)
    ds.PatientID = str(patient_id)
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.PatientAge = "050Y"
    ds.PatientAddress = "1 Phantom Street, Testtown"
    ds.PatientTelephoneNumbers = "+00 000 000000"
    ds.OtherPatientIDs = "PH-OTHER-0001"
    ds.EthnicGroup = "UNKNOWN"


def _fake_study(ds) -> None:
    """Study, series, equipment and people, with fixed dates so files are reproducible."""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = "20200314"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "102231"
    ds.AcquisitionDateTime = "20200314102231"
    ds.AccessionNumber = "ACC0001"
    ds.StudyID = "1"
    ds.StudyDescription = "LUNG POCUS"
    ds.SeriesDescription = "Lung"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "US"
    ds.BodyPartExamined = "CHEST"
    ds.ReferringPhysicianName = "DOE^JANE"
    ds.PerformingPhysicianName = "SMITH^JOHN"
    ds.OperatorsName = "SONO^GRAPHER"
    ds.InstitutionName = "Phantom General Hospital"
    ds.InstitutionAddress = "2 Hospital Road, Testtown"
    ds.InstitutionalDepartmentName = "Emergency"
    ds.StationName = "POCUS-01"
    ds.Manufacturer = "pocovid"
    ds.ManufacturerModelName = "Phantom-1"
    ds.DeviceSerialNumber = "SN-0001"
    ds.SoftwareVersions = "pocovid-phantom"
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "NO"


def _image_pixel_module(ds, H: int, W: int, monochrome: bool, compressed: bool) -> None:
    ds.SamplesPerPixel = 1 if monochrome else 3
    if compressed:  # colour JPEG is stored as YCbCr, which the header must say
        ds.PhotometricInterpretation = "MONOCHROME2" if monochrome else "YBR_FULL_422"
    else:
        ds.PhotometricInterpretation = "MONOCHROME2" if monochrome else "RGB"
    if not monochrome:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = H, W
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0


def _cine_module(ds, T: int, fps: float) -> None:
    """Frame timing of a multi-frame file, so readers play it at the right speed."""
    from pydicom.datadict import tag_for_keyword

    ds.NumberOfFrames = T
    ds.FrameIncrementPointer = tag_for_keyword("FrameTime")
    ds.FrameTime = f"{1000.0 / fps:.6g}"  # milliseconds
    ds.CineRate = round(fps)  # IS: a whole number of frames per second
    ds.RecommendedDisplayFrameRate = round(fps)
    ds.EffectiveDuration = f"{T / fps:.6g}"


def _ultrasound_regions(region_box, cm_per_pixel: float | None):
    """A one-item SequenceOfUltrasoundRegions: where the scan sector is and its pixel spacing."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    x0, y0, x1, y1 = (int(v) for v in region_box)
    item = Dataset()
    item.RegionSpatialFormat = 1  # 2D
    item.RegionDataType = 1  # tissue
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1 - 1, y1 - 1  # inclusive in DICOM
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3  # cm
    item.PhysicalDeltaX = item.PhysicalDeltaY = float(cm_per_pixel or 0.04)
    item.ReferencePixelX0, item.ReferencePixelY0 = (x0 + x1) // 2, y0
    return DicomSequence([item])


def _set_pixel_data(ds, stack: np.ndarray, compressed: bool, quality) -> None:
    """PixelData: one JPEG fragment per frame (encapsulated), or the raw bytes."""
    from pydicom.encaps import encapsulate

    if compressed:
        fr = [_jpeg_frame(stack[i], int(quality)) for i in range(stack.shape[0])]
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.LossyImageCompressionRatio = f"{stack.nbytes / max(1, sum(len(b) for b in fr)):.4g}"
        ds.PixelData = encapsulate(fr)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        raw = stack.tobytes()
        if len(raw) % 2:
            raw += b"\x00"  # DICOM values have even length
        ds.PixelData = raw
        ds["PixelData"].VR = "OB"


def _set_extra_tags(ds, extra_tags: dict) -> None:
    """Set each keyword to its value, or remove it where the value is None."""
    from pydicom.datadict import tag_for_keyword

    for kw, value in extra_tags.items():
        if tag_for_keyword(kw) is None:
            raise ValueError(f"unknown DICOM keyword {kw!r}")
        if value is None:
            if kw in ds:
                delattr(ds, kw)
        else:
            setattr(ds, kw, value)


# --------------------------------------------------------------------------------------------
# phantom -> file


_CFG_FIELDS = {f.name for f in fields(PhantomConfig)}


def write_phantom(path, cfg: PhantomConfig | None = None, **overrides) -> Phantom:
    """Render a phantom and write it to `path`; returns what was written.

    Keyword arguments that are `PhantomConfig` fields override `cfg`; the others go to the
    writer (e.g. `compressed=True`, `monochrome=True`, `patient_name=...` for DICOM, `codec=` for
    video). Still-image extensions write the first frame only; the returned Phantom then holds
    that frame only. DICOM files get `BurnedInAnnotation` YES when overlays are drawn, and an
    ultrasound region for the sector.
    """
    path = Path(path)
    ext = path.suffix.lower()
    cfg_kw = {k: v for k, v in overrides.items() if k in _CFG_FIELDS}
    writer_kw = {k: v for k, v in overrides.items() if k not in _CFG_FIELDS}
    cfg = replace(cfg, **cfg_kw) if cfg is not None else PhantomConfig(**cfg_kw)
    if ext not in VIDEO_FORMATS and ext not in IMAGE_FORMATS and ext not in DICOM_FORMATS:
        raise ValueError(f"{path}: unsupported extension {ext!r} (videos: {' '.join(sorted(VIDEO_FORMATS))}; "
                         f"images: {' '.join(sorted(IMAGE_FORMATS))}; DICOM: .dcm)")
    p = make_phantom(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ext in IMAGE_FORMATS:
        p = _first_frame(p)
        write_image(path, p.frames[0], **writer_kw)
    elif ext in DICOM_FORMATS:
        writer_kw.setdefault("BurnedInAnnotation", "YES" if cfg.overlays else "NO")
        writer_kw.setdefault("region_box", p.box)
        top, bot = p.geometry["depth_rows"]
        writer_kw.setdefault("cm_per_pixel", p.geometry["depth_cm"] / max(bot - top, 1.0))
        write_dicom(path, p.frames, p.fps, **writer_kw)
    else:
        write_video(path, p.frames, p.fps, **writer_kw)
    return p


def _first_frame(p: Phantom) -> Phantom:
    return replace(p, frames=p.frames[:1], finding_frames=p.finding_frames[:1],
                   finding_masks=None if p.finding_masks is None else p.finding_masks[:1])

