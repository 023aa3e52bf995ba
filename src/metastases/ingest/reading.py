"""Read one file of a patient folder and say what it is: not DICOM, truncated, non-image, or an image.

Files are read whatever their name or extension, with or without the 128-byte preamble and file meta
header (old exports write bare datasets: read with ``force=True`` and kept only when they carry a SOP
Class UID). Pixel data is deferred (read from disk only when a chosen series is decoded), so an
unwanted 3000-slice series costs header parsing only.

The study, frame of reference and date values kept here are identifying: they are used to group and
order series in memory and never written out.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from metastases.ingest.problems import Problem, file_label

log = logging.getLogger(__name__)

# Elements larger than this stay on disk until accessed (PixelData, mostly).
_DEFER_SIZE = "32 KB"
_UID_TEXT = re.compile(r"^[0-9]+(\.[0-9]+)+$")


@dataclasses.dataclass
class DicomFile:
    """One parsed DICOM file and the header values ingest decides on.

    ``label`` is the file's path below the patient folder (UID-like parts masked), for messages.
    ``n_frames`` is 1 for classic single-frame images; ``is_image`` is False for SR, presentation
    states, DICOMDIR and other objects without pixel data. ``defect`` is ``(problem kind, reason)`` for
    a file of a known series that cannot be used (truncated, unknown transfer syntax): its whole series
    is then reported and left out rather than used with a slice missing.
    """

    path: Path
    label: str
    dataset: Dataset
    series_uid: str
    series_number: int | None
    description: str
    protocol: str
    image_type: tuple[str, ...]
    sop_class: str
    transfer_syntax: UID
    is_image: bool
    n_frames: int
    defect: tuple[str, str] | None = None
    study_uid: str = ""
    frame_of_reference: str = ""
    study_datetime: str = ""
    """StudyDate + StudyTime (``YYYYMMDDHHMMSS``, else SeriesDate/AcquisitionDate), "" when absent."""
    body_part: str = ""
    sop_class_uid: str = ""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _series_number(ds: Dataset) -> int | None:
    value = ds.get("SeriesNumber")
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _sop_class(ds: Dataset) -> UID | None:
    uid = ds.get("SOPClassUID") or ds.get("file_meta", Dataset()).get("MediaStorageSOPClassUID")
    return UID(str(uid)) if uid else None


def _image_type(ds: Dataset) -> tuple[str, ...]:
    value = ds.get("ImageType")
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).strip().upper() for v in values)


def _study_datetime(ds: Dataset) -> str:
    for date_key, time_key in (
        ("StudyDate", "StudyTime"),
        ("SeriesDate", "SeriesTime"),
        ("AcquisitionDate", "AcquisitionTime"),
    ):
        date = re.sub(r"[^0-9]", "", _text(ds, date_key))
        if len(date) == 8:
            time = re.sub(r"[^0-9]", "", _text(ds, time_key).split(".")[0])[:6]
            return date + time.ljust(6, "0")
    return ""


def _read_forced(path: Path) -> Dataset | None:
    """A file without the preamble (or without file meta) read with ``force=True``, or None when what
    parses is not a DICOM object (no valid SOP Class UID): force makes pydicom accept almost any bytes."""
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_SIZE, force=True)
        sop_class = str(ds.get("SOPClassUID", "") or "")
    except Exception:  # garbage read as a dataset fails in many ways
        return None
    if not _UID_TEXT.match(sop_class):
        return None
    if "TransferSyntaxUID" not in ds.get("file_meta", Dataset()):
        # a bare dataset: pixel decoding needs the encoding it was read with
        implicit, little = ds.original_encoding
        if not hasattr(ds, "file_meta") or ds.file_meta is None:
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds


def expected_pixel_bytes(ds: Dataset) -> int:
    """Bytes of native (uncompressed) pixel data the header promises (rows x columns x frames x samples)."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    return int(np.ceil(int(ds.Rows) * int(ds.Columns) * frames * samples * bits / 8))


def _ends_early(ds: Dataset, size: int) -> bool:
    """True when the last top-level element promises more bytes than the file holds (a cut-off file).

    pydicom reads a cut-off file without complaint, so compare the declared length of the last element
    with the file size (elements of undefined length cannot be checked this way).
    """
    tags = list(ds.keys())
    if not tags:
        return True
    raw = ds.get_item(tags[-1])  # the raw element (declared length, file offset) when not yet converted
    length = getattr(raw, "length", None)
    tell = getattr(raw, "value_tell", None)
    return isinstance(length, int) and isinstance(tell, int) and length != 0xFFFFFFFF and tell + length > size


def _defect(
    ds: Dataset, syntax: UID, cut_off: bool, has_pixels: bool, sop_class: UID
) -> tuple[str, str] | None:
    if not syntax.is_transfer_syntax:
        return (
            "unknown_transfer_syntax",
            f"unknown transfer syntax {syntax}; convert the export to a standard one",
        )
    if cut_off:
        return "truncated", "file ends before its last element does; truncated"
    if not has_pixels and (sop_class.name.endswith("Image Storage") or "Rows" in ds):
        return "truncated", "image object without pixel data; truncated?"
    return None


def read_file(path: Path, patient_dir: Path, patient: str) -> DicomFile | Problem:
    """Parse ``path``. A file that is not DICOM, or is damaged before its series is known, comes back as a
    :class:`Problem`; a damaged file of a known series comes back with ``defect`` set."""
    label = file_label(path.relative_to(patient_dir).parts)
    try:
        ds: Dataset
        try:
            ds = pydicom.dcmread(path, defer_size=_DEFER_SIZE)
        except InvalidDicomError:
            forced = _read_forced(path)
            if forced is None:
                return Problem(patient, "", f"file {label}: not a DICOM file", "not_dicom")
            ds = forced
        # before any element is accessed: reading converts raw elements and loses their offsets
        cut_off = _ends_early(ds, path.stat().st_size)
    except OSError as exc:
        return Problem(
            patient, "", f"file {label}: cannot be read ({exc.strerror or 'I/O error'})", "not_dicom"
        )
    except Exception:  # pydicom raises many types on damaged files; report, never crash the cohort
        return _unparsable(path, label, patient)
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")))
    sop_class = _sop_class(ds)
    series_uid = _text(ds, "SeriesInstanceUID")
    if sop_class is None:
        return Problem(
            patient, "", f"file {label}: DICOM header ends early (no SOP Class UID); truncated?", "truncated"
        )
    has_pixels = any(keyword in ds for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    defect = _defect(ds, syntax, cut_off, has_pixels, sop_class)
    if defect is not None and not series_uid:
        return Problem(patient, "", f"file {label}: {defect[1]}", defect[0])
    return DicomFile(
        path=path,
        label=label,
        dataset=ds,
        series_uid=series_uid,
        series_number=_series_number(ds),
        description=_text(ds, "SeriesDescription"),
        protocol=_text(ds, "ProtocolName"),
        image_type=_image_type(ds),
        sop_class=sop_class.name if sop_class.is_valid else "unknown SOP class",
        transfer_syntax=syntax,
        is_image=has_pixels,
        n_frames=int(ds.get("NumberOfFrames", 1) or 1) if has_pixels else 0,
        defect=defect,
        study_uid=_text(ds, "StudyInstanceUID"),
        frame_of_reference=_text(ds, "FrameOfReferenceUID"),
        study_datetime=_study_datetime(ds),
        body_part=_text(ds, "BodyPartExamined").upper(),
        sop_class_uid=str(sop_class),
    )


def _unparsable(path: Path, label: str, patient: str) -> Problem:
    """Tell an unknown transfer syntax (readable file meta naming a UID pydicom lacks) from damage."""
    try:
        meta = read_file_meta_info(path)
        syntax = UID(str(meta.get("TransferSyntaxUID", "")))
    except Exception:
        syntax = None
    if syntax is not None and not syntax.is_transfer_syntax:
        return Problem(
            patient,
            "",
            f"file {label}: unknown transfer syntax {syntax}; convert the export to a standard one",
            "unknown_transfer_syntax",
        )
    return Problem(
        patient, "", f"file {label}: DICOM file cannot be parsed (truncated or corrupt)", "truncated"
    )
