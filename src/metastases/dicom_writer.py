"""Write MR series as real DICOM files: classic one-file-per-slice or one enhanced multi-frame file.

Used by the demo cohort generator and by the tests, which build their own awkward inputs
(shuffled, compressed, multi-frame, broken) with it. Geometry follows DICOM PS3.3 C.7.6.2:
positions are in LPS millimetres, ``ImagePositionPatient`` is the centre of pixel (0, 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
ENHANCED_MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4.1")


@dataclasses.dataclass(frozen=True)
class SeriesGeometry:
    """Where the slices of one series sit in patient (LPS) space.

    ``pixel_spacing`` is (between rows, between columns) in mm, as in the DICOM tag.
    ``row_direction`` is the direction of increasing column index, ``column_direction`` of increasing row.
    """

    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    first_position: tuple[float, float, float]
    slice_spacing: float
    n_slices: int
    slice_thickness: float | None = None

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.row_direction), np.asarray(self.column_direction))

    def positions(self) -> np.ndarray:
        """``(n_slices, 3)`` ImagePositionPatient of every slice, in acquisition order."""
        steps = np.arange(self.n_slices)[:, None] * self.slice_spacing
        return np.asarray(self.first_position)[None, :] + steps * self.normal[None, :]

    def voxel_centres(self) -> np.ndarray:
        """``(n_slices, rows, columns, 3)`` LPS centre of every pixel."""
        rows = np.arange(self.rows)[:, None, None] * self.pixel_spacing[0] * np.asarray(self.column_direction)
        cols = np.arange(self.columns)[None, :, None] * self.pixel_spacing[1] * np.asarray(self.row_direction)
        plane = rows + cols
        return self.positions()[:, None, None, :] + plane[None]


@dataclasses.dataclass(frozen=True)
class SeriesHeader:
    """Everything written into the headers besides geometry and pixels.

    ``identity`` holds patient/visit tags (PatientName, PatientID, ...) that the pipeline must never leak.
    ``uid_seed`` makes every UID a deterministic function of the caller's seed.
    """

    series_description: str
    series_number: int
    uid_seed: str
    identity: dict[str, str] = dataclasses.field(default_factory=dict)
    protocol_name: str | None = None
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    study_date: str = "20240101"
    manufacturer: str = "DEMO"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND")
    study_seed: str | None = None
    """Seeds the StudyInstanceUID and FrameOfReferenceUID instead of ``uid_seed``: series written with
    different ``uid_seed`` but one ``study_seed`` belong to one study."""
    study_time: str = "101500"
    body_part: str | None = None


def _uid(header: SeriesHeader, *parts: object) -> UID:
    return generate_uid(entropy_srcs=[header.uid_seed, *map(str, parts)])


def _base_dataset(header: SeriesHeader, sop_class: UID, sop_instance: UID) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.Modality = "MR"
    ds.Manufacturer = header.manufacturer
    study_seed = header.study_seed if header.study_seed is not None else header.uid_seed
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[study_seed, "study"])
    ds.SeriesInstanceUID = _uid(header, "series", header.series_number)
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_seed, "frame-of-reference"])
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = header.study_date
    ds.StudyTime = ds.SeriesTime = header.study_time
    if header.body_part is not None:
        ds.BodyPartExamined = header.body_part
    ds.SeriesNumber = header.series_number
    ds.SeriesDescription = header.series_description
    if header.protocol_name is not None:
        ds.ProtocolName = header.protocol_name
    ds.ImageType = list(header.image_type)
    for keyword, value in header.identity.items():
        setattr(ds, keyword, value)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    if pixels.dtype not in (np.uint16, np.int16):
        raise ValueError(f"pixels must be uint16 or int16, got {pixels.dtype}")
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


def _finish(ds: Dataset, path: Path, transfer_syntax: UID) -> None:
    if transfer_syntax == RLELossless:
        # keep the caller's deterministic SOPInstanceUID (pydicom would otherwise generate a random one)
        ds.compress(RLELossless, generate_instance_uid=False)
    elif transfer_syntax != ExplicitVRLittleEndian:
        raise ValueError(f"unsupported transfer syntax for writing: {transfer_syntax}")
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_classic_series(
    pixels: np.ndarray,
    geometry: SeriesGeometry,
    header: SeriesHeader,
    paths: Sequence[Path],
    transfer_syntax: UID = ExplicitVRLittleEndian,
    instance_numbers: Sequence[int] | None = None,
) -> None:
    """Write ``pixels`` (``[n_slices, rows, columns]`` stored values) as one MR Image Storage file per slice.

    ``paths[k]`` receives slice ``k`` (in geometric order); callers shuffle paths or instance numbers
    to imitate exports whose file order and numbering say nothing about slice order.
    """
    if pixels.shape != (geometry.n_slices, geometry.rows, geometry.columns):
        raise ValueError(f"pixels shape {pixels.shape} does not match the geometry")
    if len(paths) != geometry.n_slices:
        raise ValueError("one path per slice is needed")
    numbers = (
        list(instance_numbers) if instance_numbers is not None else list(range(1, geometry.n_slices + 1))
    )
    for k, (position, path) in enumerate(zip(geometry.positions(), paths, strict=True)):
        ds = _base_dataset(header, MR_IMAGE_STORAGE, _uid(header, "instance", header.series_number, k))
        ds.InstanceNumber = numbers[k]
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.ImageOrientationPatient = [
            round(float(v), 6) for v in (*geometry.row_direction, *geometry.column_direction)
        ]
        ds.PixelSpacing = [round(float(v), 6) for v in geometry.pixel_spacing]
        ds.SliceThickness = round(float(geometry.slice_thickness or geometry.slice_spacing), 4)
        ds.SpacingBetweenSlices = round(float(geometry.slice_spacing), 4)
        ds.SliceLocation = round(float(position @ geometry.normal), 4)
        ds.RescaleSlope = header.rescale_slope
        ds.RescaleIntercept = header.rescale_intercept
        ds.RescaleType = "US"
        _set_pixels(ds, pixels[k])
        _finish(ds, Path(path), transfer_syntax)


def write_enhanced_series(
    pixels: np.ndarray,
    geometry: SeriesGeometry,
    header: SeriesHeader,
    path: Path,
    frame_order: Sequence[int] | None = None,
    transfer_syntax: UID = ExplicitVRLittleEndian,
) -> None:
    """Write ``pixels`` as one Enhanced MR Image Storage (multi-frame) file.

    Position and orientation go to the per-frame and shared functional groups; ``frame_order``
    lists which slice each stored frame is, so frames need not be stored in geometric order.
    """
    order = list(frame_order) if frame_order is not None else list(range(geometry.n_slices))
    ds = _base_dataset(header, ENHANCED_MR_IMAGE_STORAGE, _uid(header, "enhanced", header.series_number))
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(order)
    measures = Dataset()
    measures.PixelSpacing = [round(float(v), 6) for v in geometry.pixel_spacing]
    measures.SliceThickness = round(float(geometry.slice_thickness or geometry.slice_spacing), 4)
    measures.SpacingBetweenSlices = round(float(geometry.slice_spacing), 4)
    orientation = Dataset()
    orientation.ImageOrientationPatient = [
        round(float(v), 6) for v in (*geometry.row_direction, *geometry.column_direction)
    ]
    transform = Dataset()
    transform.RescaleSlope = header.rescale_slope
    transform.RescaleIntercept = header.rescale_intercept
    transform.RescaleType = "US"
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    positions = geometry.positions()
    frames = []
    for k in order:
        plane = Dataset()
        plane.ImagePositionPatient = [round(float(v), 4) for v in positions[k]]
        frame = Dataset()
        frame.PlanePositionSequence = [plane]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    _set_pixels(ds, pixels[order])
    _finish(ds, Path(path), transfer_syntax)


def axial_geometry(
    rows: int,
    columns: int,
    n_slices: int,
    pixel_spacing: float,
    slice_spacing: float,
    tilt_degrees: float = 0.0,
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> SeriesGeometry:
    """An axial stack centred on ``centre`` (LPS mm), tilted about the left-right axis by ``tilt_degrees``.

    Rows run anterior to posterior and columns right to left (the usual radiological display),
    slices inferior to superior.
    """
    angle = np.deg2rad(tilt_degrees)
    row_direction = np.array([1.0, 0.0, 0.0])
    column_direction = np.array([0.0, np.cos(angle), -np.sin(angle)])
    return _centred_stack(row_direction, column_direction, rows, columns, n_slices, pixel_spacing,
                          slice_spacing, centre)  # fmt: skip


def _centred_stack(
    row_direction: np.ndarray,
    column_direction: np.ndarray,
    rows: int,
    columns: int,
    n_slices: int,
    pixel_spacing: float,
    slice_spacing: float,
    centre: tuple[float, float, float],
) -> SeriesGeometry:
    """The stack of ``n_slices`` ``rows x columns`` images with these direction cosines, centred on ``centre``
    (LPS mm), slices along ``row x column``."""
    normal = np.cross(row_direction, column_direction)
    half_extent = (
        row_direction * (columns - 1) * pixel_spacing / 2
        + column_direction * (rows - 1) * pixel_spacing / 2
        + normal * (n_slices - 1) * slice_spacing / 2
    )
    return SeriesGeometry(
        rows=rows,
        columns=columns,
        pixel_spacing=(pixel_spacing, pixel_spacing),
        row_direction=_xyz(row_direction),
        column_direction=_xyz(column_direction),
        first_position=_xyz(np.asarray(centre) - half_extent),
        slice_spacing=slice_spacing,
        n_slices=n_slices,
    )


PLANES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}
"""(row direction, column direction) in LPS as scanners write them: axial rows run to the patient's left
and columns posterior; coronal and sagittal images are displayed head up (columns run inferior)."""


def plane_geometry(
    plane: str,
    *,
    rows: int,
    columns: int,
    n_slices: int,
    pixel_spacing: float,
    slice_spacing: float,
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> SeriesGeometry:
    """An untilted ``axial``, ``coronal`` or ``sagittal`` stack centred on ``centre`` (LPS mm).

    Args:
        plane: one of :data:`PLANES`.
        rows, columns: the image matrix.
        n_slices: slices along the normal (row x column direction).
        pixel_spacing: in-plane spacing in mm (square pixels).
        slice_spacing: mm between slice centres (1 for an isotropic 3D acquisition).
        centre: LPS centre of the stack.
    """
    row_direction, column_direction = (np.asarray(v) for v in PLANES[plane])
    return _centred_stack(row_direction, column_direction, rows, columns, n_slices, pixel_spacing,
                          slice_spacing, centre)  # fmt: skip


def _xyz(vector: np.ndarray) -> tuple[float, float, float]:
    """A 3-vector as a tuple of Python floats (the shape the DICOM tags and SeriesGeometry take)."""
    x, y, z = (float(v) for v in vector)
    return x, y, z


def write_multiplane_series(
    pixels: Sequence[np.ndarray],
    geometries: Sequence[SeriesGeometry],
    header: SeriesHeader,
    paths: Sequence[Path],
    transfer_syntax: UID = ExplicitVRLittleEndian,
) -> None:
    """Write one single-slice MR Image Storage file per plane, all in one series (a 3-plane localizer).

    ``pixels[k]`` (``[rows, columns]`` stored values) lies in the first slice of ``geometries[k]``;
    each plane has its own orientation, so readers must not stack them into one volume.
    """
    if not len(pixels) == len(geometries) == len(paths):
        raise ValueError("one geometry and one path per plane are needed")
    for k, (plane, geometry, path) in enumerate(zip(pixels, geometries, paths, strict=True)):
        ds = _base_dataset(header, MR_IMAGE_STORAGE, _uid(header, "plane", header.series_number, k))
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [round(float(v), 4) for v in geometry.first_position]
        ds.ImageOrientationPatient = [
            round(float(v), 6) for v in (*geometry.row_direction, *geometry.column_direction)
        ]
        ds.PixelSpacing = [round(float(v), 6) for v in geometry.pixel_spacing]
        ds.SliceThickness = round(float(geometry.slice_thickness or geometry.slice_spacing), 4)
        ds.RescaleSlope = header.rescale_slope
        ds.RescaleIntercept = header.rescale_intercept
        ds.RescaleType = "US"
        _set_pixels(ds, plane)
        _finish(ds, Path(path), transfer_syntax)
