"""Where each 2-D image of a series sits in space, slice order, geometry checks and the NIfTI (RAS) affine.

DICOM patient space is LPS; NIfTI world space is RAS, so x and y change sign. ImageOrientationPatient
holds the row direction (increasing column index) then the column direction (increasing row index);
the slice normal is row x column. Slices are ordered by the projection of ImagePositionPatient on
that normal, never by InstanceNumber or file name. Classic images carry these tags at top level;
enhanced multi-frame images in the per-frame or shared functional groups.

Vector arithmetic is written out elementwise (:func:`dot3`), never as ``@``/``np.dot``/``np.linalg``:
those go through BLAS, whose summation order depends on the CPU, and the NIfTI affine, the slice
order and the manifest must be the same bytes on any CPU.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
from pydicom.dataset import Dataset

from metastases.ingest.reading import DicomFile

# Two orientations (unit vectors) or pixel spacings closer than this are the same (rounding in headers).
_ORIENTATION_ATOL = 1e-3
_PIXEL_SPACING_RTOL = 1e-3
# Two slices closer than this along the normal (mm) share a position: a duplicate.
_DUPLICATE_MM = 0.01
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def dot3(points: np.ndarray, vector: Sequence[float] | np.ndarray) -> np.ndarray:
    """``points @ vector`` for float64 points ``(..., 3)``, summed left to right (no BLAS)."""
    p = np.asarray(points, np.float64)
    return p[..., 0] * float(vector[0]) + p[..., 1] * float(vector[1]) + p[..., 2] * float(vector[2])


def _length(vector: Sequence[float] | np.ndarray) -> float:
    """Euclidean length of a 3-vector (``np.linalg.norm`` of a vector is a BLAS dot product)."""
    return math.sqrt(float(dot3(np.asarray(vector, np.float64), vector)))


class GeometryError(Exception):
    """A series whose geometry cannot be trusted; ``kind`` is a report problem kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class Frame:
    """One 2-D image: slice ``frame`` of file ``file_index`` of a series, with its header geometry.

    ``position`` is ImagePositionPatient (LPS mm, centre of pixel (0, 0)), ``orientation`` the six
    direction cosines, ``pixel_spacing`` (between rows, between columns) in mm. ``slope``/``intercept``
    turn stored values into real values.
    """

    file_index: int
    frame: int
    rows: int
    columns: int
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    slope: float
    intercept: float


@dataclasses.dataclass(frozen=True)
class StackGeometry:
    """A checked stack: ``order[k]`` is the index (into the frames list) of slice ``k``, inferior-most
    along the normal first. ``affine`` maps NIfTI voxel (i=column, j=row, k=slice) to RAS mm."""

    order: tuple[int, ...]
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    affine: np.ndarray

    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k in mm: (between columns, between rows, between slices)."""
        return (self.pixel_spacing[1], self.pixel_spacing[0], self.slice_spacing)


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in cast(Iterable[Any], value))
    except (TypeError, ValueError):
        return None
    return values if len(values) == count else None


def _orientation(value: object) -> tuple[float, ...] | None:
    """Six direction cosines, or None unless they are two (nearly) perpendicular unit vectors."""
    cosines = _floats(value, 6)
    if cosines is None:
        return None
    row, column = np.asarray(cosines[:3]), np.asarray(cosines[3:])
    if abs(_length(row) - 1) > 0.01 or abs(_length(column) - 1) > 0.01:
        return None
    if abs(float(dot3(row, column))) > 0.01:
        return None
    return cosines


def _number(value: object, default: float) -> float:
    try:
        return default if value is None or value == "" else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def _functional_group_value(
    ds: Dataset, per_frame: Dataset | None, sequence: str, keyword: str
) -> object | None:
    """``keyword`` from ``sequence`` in this frame's group, else the shared group, else the top level."""
    shared_groups = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_groups[0] if shared_groups else None
    for group in (per_frame, shared):
        if group is not None and sequence in group and len(group[sequence].value) > 0:
            value = group[sequence].value[0].get(keyword)
            if value is not None:
                return value
    return ds.get(keyword)


def frames_of(file: DicomFile, file_index: int) -> list[Frame]:
    """Every 2-D image of one file with its geometry and rescale (one for classic images)."""
    ds = file.dataset
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    per_frame_groups = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame_groups is None and file.n_frames > 1:
        raise GeometryError(
            "inconsistent", f"file {file.label}: multi-frame image without per-frame positions"
        )
    if per_frame_groups is not None and len(per_frame_groups) != file.n_frames:
        raise GeometryError(
            "inconsistent",
            f"file {file.label}: {file.n_frames} frames but {len(per_frame_groups)} per-frame groups",
        )
    frames = []
    for index in range(file.n_frames):
        group = per_frame_groups[index] if per_frame_groups is not None else None
        frames.append(
            Frame(
                file_index=file_index,
                frame=index,
                rows=rows,
                columns=columns,
                position=_floats(
                    _functional_group_value(ds, group, "PlanePositionSequence", "ImagePositionPatient"), 3
                ),
                orientation=_orientation(
                    _functional_group_value(ds, group, "PlaneOrientationSequence", "ImageOrientationPatient")
                ),
                pixel_spacing=_floats(
                    _functional_group_value(ds, group, "PixelMeasuresSequence", "PixelSpacing"), 2
                ),
                slope=_number(
                    _functional_group_value(ds, group, "PixelValueTransformationSequence", "RescaleSlope"),
                    1.0,
                ),
                intercept=_number(
                    _functional_group_value(
                        ds, group, "PixelValueTransformationSequence", "RescaleIntercept"
                    ),
                    0.0,
                ),
            )
        )
    return frames


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal (LPS) of a plane with ImageOrientationPatient ``orientation``: row x column."""
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    return normal / _length(normal)


def plane_name(orientation: Sequence[float]) -> str:
    """``axial``, ``coronal`` or ``sagittal``: the patient axis the slice normal is closest to."""
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(slice_normal(orientation))))]


def nifti_affine(
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    first_position: Sequence[float],
    slice_step: Sequence[float],
) -> np.ndarray:
    """4x4 affine from voxel (i=column, j=row, k=slice) to RAS mm.

    Column i moves along the row direction by the spacing between columns (PixelSpacing[1]), row j
    along the column direction by the spacing between rows (PixelSpacing[0]), slice k by
    ``slice_step`` (the LPS vector between consecutive slice positions). Any tilt stays in the matrix.
    """
    row_direction = np.asarray(orientation[:3], float)
    column_direction = np.asarray(orientation[3:], float)
    lps = np.eye(4)
    lps[:3, 0] = row_direction * float(pixel_spacing[1])
    lps[:3, 1] = column_direction * float(pixel_spacing[0])
    lps[:3, 2] = np.asarray(slice_step, float)
    lps[:3, 3] = np.asarray(first_position, float)
    # LPS_TO_RAS @ lps, as a row scaling (exact, no BLAS); + 0.0 turns the -0.0 of -1 * 0 into 0.0
    return LPS_TO_RAS.diagonal()[:, None] * lps + 0.0


def _check_consistent(frames: Sequence[Frame]) -> None:
    missing = [
        name
        for name, attribute in (
            ("ImagePositionPatient", "position"),
            ("ImageOrientationPatient", "orientation"),
            ("PixelSpacing", "pixel_spacing"),
        )
        if any(getattr(frame, attribute) is None for frame in frames)
    ]
    if missing:
        raise GeometryError("inconsistent", f"missing or malformed {', '.join(missing)} on some slices")
    matrices = sorted({(f.rows, f.columns) for f in frames})
    if len(matrices) > 1:
        shown = ", ".join(f"{r}x{c}" for r, c in matrices)
        raise GeometryError("inconsistent", f"slices differ in matrix size (rows x columns: {shown})")
    orientations = np.array([f.orientation for f in frames])
    if np.abs(orientations - orientations[0]).max() > _ORIENTATION_ATOL:
        raise GeometryError("inconsistent", "slices differ in orientation (ImageOrientationPatient)")
    spacings = np.array([f.pixel_spacing for f in frames])
    if np.abs(spacings / spacings[0] - 1).max() > _PIXEL_SPACING_RTOL:
        raise GeometryError("inconsistent", "slices differ in pixel spacing (PixelSpacing)")
    if min(matrices[0]) < 1 or (spacings[0] <= 0).any():
        raise GeometryError("inconsistent", "empty matrix or non-positive pixel spacing")


def check_stack(frames: Sequence[Frame], spacing_tolerance: float) -> StackGeometry:
    """Check that ``frames`` form one evenly spaced stack and return its order and affine.

    Raises :class:`GeometryError` for differing matrix/orientation/pixel spacing, slices sharing a
    position, spacing that deviates from the median step by more than ``spacing_tolerance`` (relative:
    gaps, overlaps) and positions that do not advance along one straight line.
    """
    _check_consistent(frames)
    orientation = frames[0].orientation
    pixel_spacing = frames[0].pixel_spacing
    assert orientation is not None and pixel_spacing is not None  # checked above
    positions = np.array([f.position for f in frames], float)
    along_normal = dot3(positions, slice_normal(orientation))
    order = np.argsort(along_normal, kind="stable")
    sorted_along = along_normal[order]
    steps = np.diff(sorted_along)
    duplicates = int((steps < _DUPLICATE_MM).sum())
    if duplicates:
        raise GeometryError(
            "duplicate_slices", f"{duplicates} slice(s) repeat a position already taken by another slice"
        )
    median = float(np.median(steps))
    deviation = np.abs(steps - median) / median
    if deviation.max() > spacing_tolerance:
        worst = int(np.argmax(deviation))
        kind = "gap" if steps[worst] > median else "overlap"
        raise GeometryError(
            "uneven_spacing",
            f"uneven slice spacing ({kind}): slices {worst + 1} and {worst + 2} (in position order) are "
            f"{steps[worst]:.2f} mm apart where the spacing is {median:.2f} mm "
            f"(tolerance {spacing_tolerance:.0%})",
        )
    ordered = positions[order]
    step = (ordered[-1] - ordered[0]) / (len(ordered) - 1)
    drift = np.linalg.norm(ordered - (ordered[0] + np.arange(len(ordered))[:, None] * step), axis=1).max()
    if drift > 0.5 * min(pixel_spacing):
        raise GeometryError(
            "inconsistent", f"slice positions do not lie on one straight line (off by up to {drift:.2f} mm)"
        )
    affine = nifti_affine(orientation, pixel_spacing, ordered[0], step)
    return StackGeometry(
        order=tuple(int(i) for i in order),
        rows=frames[0].rows,
        columns=frames[0].columns,
        pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
        slice_spacing=_length(step),
        affine=affine,
    )


def repeats_per_position(frames: Sequence[Frame]) -> int:
    """How many images share each slice position when every position is repeated alike (a 4-D series:
    diffusion directions, perfusion or dynamic time points), else 1. Needs consistent orientation."""
    orientation = frames[0].orientation
    if orientation is None or any(f.orientation != orientation or f.position is None for f in frames):
        return 1
    along = dot3(np.array([f.position for f in frames], float), slice_normal(orientation))
    _, counts = np.unique(np.round(along / _DUPLICATE_MM).astype(np.int64), return_counts=True)
    if len(counts) > 1 and counts.min() == counts.max() and counts[0] > 1:
        return int(counts[0])
    return 1
