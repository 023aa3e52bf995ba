"""Pixels of a checked stack -> one NIfTI volume: decode, rescale per slice, stack in geometric order.

Volume axes follow NIfTI: i = column, j = row, k = slice (so the array is ``[columns, rows, slices]``).
Values are real values (stored * RescaleSlope + RescaleIntercept, slice by slice), kept as int16 when
every value is a whole number that fits, else float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import nibabel as nib
import numpy as np

from metastases.ingest.geometry import Frame, StackGeometry
from metastases.ingest.reading import DicomFile, expected_pixel_bytes

_INT16 = np.iinfo(np.int16)


class DecodeError(Exception):
    """Pixel data that cannot be turned into an array; ``kind`` is a report problem kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def decode_file(file: DicomFile) -> np.ndarray:
    """Stored values of every frame of ``file`` as ``[frames, rows, columns]`` (pydicom's pixel handlers).

    Compressed transfer syntaxes decode through whichever plugin pydicom finds (pylibjpeg, GDCM, Pillow).
    """
    ds = file.dataset
    syntax = file.transfer_syntax
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DecodeError("inconsistent", f"file {file.label}: colour images are not MR magnitude images")
    if not syntax.is_compressed and "PixelData" in ds and len(ds.PixelData) < expected_pixel_bytes(ds):
        raise DecodeError(
            "truncated", f"file {file.label}: pixel data shorter than the header says; truncated"
        )
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for missing/failed decoders
        raise DecodeError(
            "undecodable",
            f"file {file.label}: cannot decode pixel data stored as {syntax.name} ({syntax}): "
            f"{type(exc).__name__}; install a decoder (pylibjpeg plugins, GDCM) or export uncompressed",
        ) from None
    return pixels.reshape(file.n_frames, int(ds.Rows), int(ds.Columns))


def stack_volume(files: Sequence[DicomFile], frames: Sequence[Frame], geometry: StackGeometry) -> np.ndarray:
    """Real-valued ``[columns, rows, slices]`` volume in ``geometry.order``; int16 if exact, else float32.

    The result is the transpose of a C-ordered ``[slices, rows, columns]`` stack, i.e. Fortran-ordered
    ``[columns, rows, slices]``, which is the byte order NIfTI stores, so writing needs no copy.
    """
    decoded: dict[int, np.ndarray] = {}
    ordered = [frames[index] for index in geometry.order]
    for frame in ordered:
        if frame.file_index not in decoded:
            decoded[frame.file_index] = decode_file(files[frame.file_index])
    stored = np.stack([decoded[frame.file_index][frame.frame] for frame in ordered])
    # Slope and intercept may differ per slice (scanners rescale each image to use the full range).
    slopes = np.array([frame.slope for frame in ordered])[:, None, None]
    intercepts = np.array([frame.intercept for frame in ordered])[:, None, None]
    integral = np.issubdtype(stored.dtype, np.integer) and all(
        float(v).is_integer() for v in np.concatenate([slopes.ravel(), intercepts.ravel()])
    )
    if integral:
        # exact integer arithmetic; the identity rescale (the common case) needs none
        identity = bool((slopes == 1).all() and (intercepts == 0).all())
        real = (
            stored
            if identity
            else stored.astype(np.int64) * slopes.astype(np.int64) + intercepts.astype(np.int64)
        )
        if _INT16.min <= real.min() and real.max() <= _INT16.max:
            return real.astype(np.int16).transpose(2, 1, 0)
        return real.astype(np.float32).transpose(2, 1, 0)
    real = stored.astype(np.float64) * slopes + intercepts
    return real.astype(np.float32).transpose(2, 1, 0)


def nifti_image(volume: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A NIfTI-1 image with ``affine`` as both qform and sform (scanner space, mm).

    The header's free-text fields (descrip, aux_file, intent_name) stay empty: nothing from DICOM goes there.
    """
    image = nib.Nifti1Image(volume, affine)
    image.set_qform(affine, code="scanner")
    # nibabel derives the quaternion through LAPACK (svd, eigh): for the usual 180-degree LPS -> RAS
    # rotation its sign, and elsewhere its last bits, depend on the CPU. Written here from the same
    # rotation in closed form, so the header is the same bytes on any CPU.
    header = image.header
    _, b, c, d = qform_quaternion(affine)
    header["quatern_b"], header["quatern_c"], header["quatern_d"] = b, c, d
    image.set_sform(affine, code="scanner")
    header.set_xyzt_units(xyz="mm")
    return image


def qform_quaternion(affine: np.ndarray) -> tuple[float, float, float, float]:
    """Unit quaternion ``(a, b, c, d)``, ``a >= 0``, of the rotation in ``affine`` as NIfTI's qform holds it:
    columns scaled to unit length, the third negated when the determinant is negative (``qfac = -1``).

    Elementwise arithmetic in a fixed order (Shepperd's method on the largest diagonal term), no LAPACK.
    """
    r = [[float(v) for v in row] for row in np.asarray(affine, np.float64)[:3, :3]]
    for j in range(3):
        length = math.sqrt(r[0][j] * r[0][j] + r[1][j] * r[1][j] + r[2][j] * r[2][j])
        for i in range(3):
            r[i][j] /= length
    det = (
        r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0])
    )
    if det < 0:
        for i in range(3):
            r[i][2] = -r[i][2]
    (xx, xy, xz), (yx, yy, yz), (zx, zy, zz) = r
    trace = xx + yy + zz
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = (0.25 * s, (zy - yz) / s, (xz - zx) / s, (yx - xy) / s)
    elif xx >= yy and xx >= zz:
        s = 2.0 * math.sqrt(1.0 + xx - yy - zz)
        q = ((zy - yz) / s, 0.25 * s, (xy + yx) / s, (xz + zx) / s)
    elif yy >= zz:
        s = 2.0 * math.sqrt(1.0 + yy - xx - zz)
        q = ((xz - zx) / s, (xy + yx) / s, 0.25 * s, (yz + zy) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + zz - xx - yy)
        q = ((yx - xy) / s, (xz + zx) / s, (yz + zy) / s, 0.25 * s)
    norm = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    sign = -1.0 if q[0] < 0 else 1.0
    a, b, c, d = (sign * v / norm + 0.0 for v in q)
    return a, b, c, d
