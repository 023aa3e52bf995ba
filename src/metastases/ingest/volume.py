"""Pixels of a checked stack -> one NIfTI volume: decode, rescale per slice, stack in geometric order.

Volume axes follow NIfTI: i = column, j = row, k = slice (so the array is ``[columns, rows, slices]``).
Values are real values (stored * RescaleSlope + RescaleIntercept, slice by slice), kept as int16 when
every value is a whole number that fits, else float32.
"""

from __future__ import annotations

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
    image.set_sform(affine, code="scanner")
    image.header.set_xyzt_units(xyz="mm")
    return image
