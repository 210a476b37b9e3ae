"""DICOM de-identification before anything is stored, after the DICOM PS3.15 Annex E Basic
Application Level Confidentiality Profile (Table E.1-1), as far as a file-by-file tool can.

    from pocovid.server.deid import deidentify_dicom
    report = deidentify_dicom("in.dcm", "out.dcm")     # raises DeidError when it cannot be read

What is done, in every data set and every nested sequence item (docs/server.md lists it too):

* the profile's attributes (`PROFILE`): X -> removed, Z -> kept empty (type 2 attributes such as
  PatientName, PatientID, PatientBirthDate, PatientSex, StudyDate, ReferringPhysicianName,
  AccessionNumber, StudyID), D -> removed or emptied (no dummy values are made up), U -> replaced;
* every person name (VR PN) not listed: emptied; every date, time and date-time (VR DA, TM, DT)
  not listed: removed (StudyDate / StudyTime / ContentDate / ContentTime kept empty). Dates are
  not shifted: nothing of them survives;
* every UID (VR UI) that is not a UID defined by the DICOM standard (SOP classes, transfer
  syntaxes, coding schemes stay): replaced by a new random UID (`pydicom.uid.generate_uid`),
  the same new UID for the same old one within the file, so references inside it still agree;
  the file meta's MediaStorageSOPInstanceUID follows SOPInstanceUID;
* private tags removed; curve data (groups 50xx) and overlays (groups 60xx) removed;
* PatientIdentityRemoved = YES, DeidentificationMethod and DeidentificationMethodCodeSequence
  (DCM 113100, Basic Application Confidentiality Profile) added; LongitudinalTemporalInformation
  Modified = REMOVED.

* text burnt into the pixels: every pixel outside the scan region (`pocovid.region`, found over
  the whole cine) is blanked, so scanner overlays with names, dates and hospital are gone from the
  stored file. The region is found automatically: on very short, small, JPEG-compressed clips it
  can take in text drawn next to the image, and text drawn *inside* the scan region is never
  removed. So BurnedInAnnotation keeps the file's own statement and is shown to reviewers, who
  look at a contribution's frames before accepting it. No region found: the pixels are kept. Free-text
attributes outside the profile (e.g. a manufacturer's ImageType values) are kept.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from pocovid.errors import PocovidError
from pocovid.files import atomic_path

#: DeidentificationMethod (LO, at most 64 characters a value, several values).
METHOD = ["pocovid: PS3.15 E.1-1 Basic Profile", "dates and times removed (not shifted)", "UIDs replaced",
          "private tags, curves and overlays removed", "pixels outside the scan region blanked (burnt-in text)"]

# Table E.1-1 (Basic Profile column). X: remove, Z: empty, D: remove/empty (no dummies), U: new UID.
# Keywords pydicom does not know are ignored (retired ones differ between dictionary versions).
_X = """
AccessionNumber:Z AcquisitionComments AcquisitionContextSequence AcquisitionDate AcquisitionDateTime
AcquisitionDeviceProcessingDescription AcquisitionProtocolDescription AcquisitionTime ActualHumanPerformersSequence
AdditionalPatientHistory AdmissionID AdmittingDate AdmittingDiagnosesCodeSequence AdmittingDiagnosesDescription
AdmittingTime AffectedSOPInstanceUID Allergies Arbitrary AuthorObserverSequence BranchOfService CassetteID
CommentsOnThePerformedProcedureStep ConcatenationUID:U ConfidentialityConstraintOnPatientDataDescription
ContentCreatorName:Z ContentCreatorIdentificationCodeSequence ContentDate:Z ContentSequence ContentTime:Z
ContextGroupExtensionCreatorUID:U ContributionDescription CountryOfResidence CreatorVersionUID:U
CurrentPatientLocation CurveDate CurveTime CustodialOrganizationSequence DataSetTrailingPadding
DerivationDescription DetectorID DeviceSerialNumber DeviceUID:U DigitalSignaturesSequence
DimensionOrganizationUID:U DischargeDiagnosisDescription DistributionAddress DistributionName DoseReferenceUID:U
EndAcquisitionDateTime EthnicGroup ExpectedCompletionDateTime FailedSOPInstanceUIDList:U FiducialUID:U
FillerOrderNumberImagingServiceRequest:Z FrameComments FrameOfReferenceUID:U GantryID GeneratorID
GraphicAnnotationSequence HumanPerformerName HumanPerformerOrganization IconImageSequence IdentifyingComments
ImageComments ImagePresentationComments ImagingServiceRequestComments Impressions InstanceCoercionDateTime
InstanceCreationDate InstanceCreationTime InstanceCreatorUID:U InstitutionAddress InstitutionCodeSequence
InstitutionName InstitutionalDepartmentName InstitutionalDepartmentTypeCodeSequence InsurancePlanIdentification
IntendedRecipientsOfResultsIdentificationSequence InterpretationApproverSequence InterpretationAuthor
InterpretationDiagnosisDescription InterpretationIDIssuer InterpretationRecorder InterpretationText
InterpretationTranscriber IrradiationEventUID:U IssuerOfAdmissionID IssuerOfAdmissionIDSequence IssuerOfPatientID
IssuerOfPatientIDQualifiersSequence IssuerOfServiceEpisodeID LargePaletteColorLookupTableUID:U LastMenstrualDate
MAC MediaStorageSOPInstanceUID:U MedicalAlerts MedicalRecordLocator MilitaryRank ModifiedAttributesSequence
ModifiedImageDescription ModifyingDeviceID NameOfPhysiciansReadingStudy NamesOfIntendedRecipientsOfResults
Occupation OperatorIdentificationSequence OperatorsName OrderCallbackPhoneNumber OrderCallbackTelecomInformation
OrderEnteredBy OrderEntererLocation OriginalAttributesSequence OtherPatientIDs OtherPatientIDsSequence
OtherPatientNames OverlayComments OverlayDate OverlayTime ParticipantSequence PatientAddress PatientAge
PatientBirthDate:Z PatientBirthName PatientBirthTime PatientComments PatientID:Z PatientInsurancePlanCodeSequence
PatientMotherBirthName PatientName:Z PatientPrimaryLanguageCodeSequence PatientPrimaryLanguageModifierCodeSequence
PatientReligiousPreference PatientSex:Z PatientSexNeutered PatientSize PatientState PatientTelecomInformation
PatientTelephoneNumbers PatientTransportArrangements PatientWeight PerformedLocation
PerformedProcedureStepDescription PerformedProcedureStepEndDate PerformedProcedureStepEndDateTime
PerformedProcedureStepEndTime PerformedProcedureStepID PerformedProcedureStepStartDate
PerformedProcedureStepStartDateTime PerformedProcedureStepStartTime PerformedStationAETitle
PerformedStationGeographicLocationCodeSequence PerformedStationName PerformedStationNameCodeSequence
PerformingPhysicianIdentificationSequence PerformingPhysicianName PersonAddress PersonIdentificationCodeSequence
PersonName PersonTelecomInformation PersonTelephoneNumbers PhysicianApprovingInterpretation
PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence PhysiciansReadingStudyIdentificationSequence PlateID
PreMedication PregnancyStatus ProtocolName ReasonForStudy ReasonForTheImagingServiceRequest
ReasonForTheRequestedProcedure ReferencedDigitalSignatureSequence ReferencedFrameOfReferenceUID:U
ReferencedGeneralPurposeScheduledProcedureStepTransactionUID:U ReferencedPatientAliasSequence
ReferencedPatientPhotoSequence ReferencedPatientSequence ReferencedPerformedProcedureStepSequence
ReferencedSOPInstanceMACSequence ReferencedSOPInstanceUID:U ReferencedSOPInstanceUIDInFile:U
ReferencedStudySequence ReferringPhysicianAddress ReferringPhysicianIdentificationSequence
ReferringPhysicianName:Z ReferringPhysicianTelephoneNumbers RegionOfResidence RelatedFrameOfReferenceUID:U
RequestAttributesSequence RequestedContrastAgent RequestedProcedureComments RequestedProcedureDescription
RequestedProcedureID RequestedProcedureLocation RequestedSOPInstanceUID:U RequestingPhysician
RequestingPhysicianIdentificationSequence RequestingService ResponsibleOrganization ResponsiblePerson
ResponsiblePersonRole ResultsComments ResultsDistributionListSequence ResultsIDIssuer ReviewerName
ScheduledHumanPerformersSequence ScheduledPatientInstitutionResidence
ScheduledPerformingPhysicianIdentificationSequence ScheduledPerformingPhysicianName
ScheduledProcedureStepDescription ScheduledProcedureStepEndDate ScheduledProcedureStepEndTime
ScheduledProcedureStepLocation ScheduledProcedureStepStartDate ScheduledProcedureStepStartTime
ScheduledStationAETitle ScheduledStationGeographicLocationCodeSequence ScheduledStationName
ScheduledStationNameCodeSequence ScheduledStudyLocation ScheduledStudyLocationAETitle SeriesDate
SeriesDescription SeriesInstanceUID:U SeriesTime ServiceEpisodeDescription ServiceEpisodeID SmokingStatus
SOPInstanceUID:U SourceApplicationEntityTitle SpecialNeeds StationName StorageMediaFileSetUID:U StudyComments
StudyDate:Z StudyDescription StudyID:Z StudyIDIssuer StudyInstanceUID:U StudyTime:Z
SynchronizationFrameOfReferenceUID:U TemplateExtensionCreatorUID:U TemplateExtensionOrganizationUID:U
TextComments TextString TimezoneOffsetFromUTC TopicAuthor TopicKeywords TopicSubject TopicTitle
TransactionUID:U UID:U VerifyingObserverIdentificationCodeSequence VerifyingObserverName
VerifyingObserverSequence VerifyingOrganization VisitComments
"""


def _profile() -> dict[int, str]:
    from pydicom.datadict import tag_for_keyword

    out = {}
    for tok in _X.split():
        kw, _, action = tok.partition(":")
        tag = tag_for_keyword(kw)
        if tag is not None:
            out[int(tag)] = action or "X"
    return out


#: tag -> action ("X" remove, "Z" empty, "U" new UID) of the Basic Profile, as pydicom knows it.
PROFILE: dict[int, str] = {}


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
    keywords: list[str] = field(default_factory=list)  # keywords removed / emptied (not their values)


def _is_standard_uid(value: str) -> bool:
    from pydicom.uid import UID

    try:
        u = UID(value)
        return bool(u.name) and u.name != str(u)  # registered in the standard's UID dictionary
    except Exception:
        return False


def deidentify_dataset(ds, report: DeidReport | None = None) -> DeidReport:
    """De-identify a pydicom Dataset in place (see the module docstring)."""
    global PROFILE
    if not PROFILE:
        PROFILE = _profile()
    report = report or DeidReport()
    if "BurnedInAnnotation" in ds:
        report.burned_in_annotation = str(ds.BurnedInAnnotation or "").strip().upper() or None
    _Cleaner(report).clean(ds)
    _mark_deidentified(ds)
    return report


_TYPE2_DATETIME = ("StudyDate", "StudyTime", "ContentDate", "ContentTime")  # emptied, not removed
_EMPTY_STRING_VRS = {"PN", "DA", "TM", "DT", "LO", "SH", "CS", "AS", "LT", "ST", "UT", "UC", "IS", "DS", "AE"}


def _is_curve_or_overlay(tag: int) -> bool:
    group = tag >> 16
    return (0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF) and group % 2 == 0


class _Cleaner:
    """The profile applied to a data set and, recursively, its sequence items; one UID map for all
    of them (a UID replaced here is replaced by the same new UID everywhere in the file)."""

    def __init__(self, report: DeidReport):
        import pydicom

        self.report = report
        self.uid_map: dict[str, str] = {}
        self.type2_datetime = {int(pydicom.datadict.tag_for_keyword(k)) for k in _TYPE2_DATETIME}

    def new_uid(self, old: str) -> str:
        from pydicom.uid import generate_uid

        old = str(old).strip()
        if old not in self.uid_map:
            self.uid_map[old] = generate_uid()
            self.report.uids_replaced += 1
        return self.uid_map[old]

    def clean(self, d) -> None:
        n_private = sum(1 for e in d if e.tag.is_private)
        if n_private:
            d.remove_private_tags()
            self.report.private_removed += n_private
        for elem in list(d):
            if _is_curve_or_overlay(int(elem.tag)):
                del d[elem.tag]  # curves and overlays (their planes may carry text or drawings)
                self.report.removed += 1
                continue
            self.apply(d, elem, self.action(elem))

    def action(self, elem) -> str | None:
        """The profile's action code for the element (X, Z, D, U, ...); for elements the profile
        does not list: names emptied, dates and times removed (Type 2 ones emptied), UIDs outside
        the standard's dictionary replaced."""
        tag = int(elem.tag)
        action = PROFILE.get(tag)
        if action is not None:
            return action
        if elem.VR == "PN":
            return "Z"
        if elem.VR in ("DA", "TM", "DT"):
            return "Z" if tag in self.type2_datetime else "X"
        if elem.VR == "UI" and elem.value and not all(_is_standard_uid(v) for v in _values(elem.value)):
            return "U"
        return None

    def apply(self, d, elem, action: str | None) -> None:
        from pydicom.sequence import Sequence

        vr = elem.VR
        if action in ("X", "D"):
            del d[elem.tag]
            self.report.removed += 1
            self.report.keywords.append(elem.keyword or str(elem.tag))
        elif action == "Z":
            elem.value = Sequence([]) if vr == "SQ" else "" if vr in _EMPTY_STRING_VRS else None
            self.report.emptied += 1
            self.report.keywords.append(elem.keyword or str(elem.tag))
        elif action == "U" and vr == "UI":
            vals = [self.new_uid(v) if not _is_standard_uid(v) else v for v in _values(elem.value)]
            elem.value = vals if len(vals) > 1 else vals[0]
        elif action == "U" and vr != "SQ":
            del d[elem.tag]
            self.report.removed += 1
        elif vr == "SQ":
            for item in elem.value:
                self.clean(item)


def _mark_deidentified(ds) -> None:
    """The file meta follows the new SOP Instance UID and loses its sender fields; the data set
    says it is de-identified, and how (PatientIdentityRemoved, DeidentificationMethod + code)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for kw in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                   "ReceivingApplicationEntityTitle", "PrivateInformationCreatorUID", "PrivateInformation"):
            if kw in meta:
                delattr(meta, kw)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    ds.LongitudinalTemporalInformationModified = "REMOVED"


def _values(v) -> list[str]:
    from pydicom.multival import MultiValue

    if isinstance(v, (list, tuple, MultiValue)):
        return [str(x) for x in v]
    return [str(v)]


def deidentify_dicom(src: str | os.PathLike, dst: str | os.PathLike) -> DeidReport:
    """Read the DICOM file `src`, de-identify it, write it to `dst` (may be the same path).

    Raises `DeidError` (one line, no tag values) when `src` is not a readable DICOM file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    src, dst = Path(src), Path(dst)
    with _quiet_pydicom():  # its validation warnings quote tag values: they must not reach the logs
        try:
            ds = pydicom.dcmread(src)
        except InvalidDicomError:
            raise DeidError("not a readable DICOM file") from None
        except Exception as e:  # truncated headers, bad lengths, ...
            raise DeidError(f"DICOM header cannot be read ({type(e).__name__})") from None
        try:
            report = deidentify_dataset(ds)
        except Exception as e:
            raise DeidError(f"DICOM header cannot be de-identified ({type(e).__name__})") from None
        try:
            report.pixels_masked = mask_outside_scan_region(ds)
        except Exception as e:  # undecodable pixels: the analysis will fail on them with the reason
            report.pixels_masked = False
            report.keywords.append(f"pixels not masked ({type(e).__name__})")
        # BurnedInAnnotation keeps the file's own statement: the region is found automatically and
        # can miss text drawn right against the image, so reviewers still see what the scanner said.
        try:
            with atomic_path(dst) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
        except Exception as e:
            raise DeidError(f"de-identified DICOM cannot be written ({type(e).__name__})") from None
    return report


def mask_outside_scan_region(ds) -> bool:
    """Blank every pixel outside the scan region (the fan or rectangle found by `pocovid.region`
    over the whole cine): scanner text burnt into the image (names, dates, hospital) lies outside
    it. Compressed pixel data is stored uncompressed afterwards. False when no region is found
    (the pixels are then left as they are and the file's BurnedInAnnotation stands)."""
    from pocovid.media import to_rgb8
    from pocovid.region import detect_scan_region

    if "PixelData" not in ds:
        return False
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()  # to Explicit VR Little Endian, YBR -> RGB
    arr = ds.pixel_array
    n = int(ds.get("NumberOfFrames", 1) or 1)
    frames = arr if n > 1 else arr[None]
    colour = frames.ndim == 4
    step = max(1, len(frames) // 32)
    region = detect_scan_region([to_rgb8(f) for f in frames[::step]])  # 16-bit or grey -> RGB 8-bit
    if region.is_full:
        return False
    keep = region.mask[..., None] if colour else region.mask
    frames = frames * keep.astype(frames.dtype)
    ds.PixelData = (frames if n > 1 else frames[0]).tobytes()
    return True


_PYDICOM_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_pydicom():
    """pydicom's value validation off (it warns and logs with the offending values) while one file
    is de-identified; the settings are process-wide, hence the lock."""
    from pydicom import config

    with _PYDICOM_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = config.settings.reading_validation_mode, config.settings.writing_validation_mode
        config.settings.reading_validation_mode = config.IGNORE
        config.settings.writing_validation_mode = config.IGNORE
        try:
            yield
        finally:
            config.settings.reading_validation_mode, config.settings.writing_validation_mode = old
