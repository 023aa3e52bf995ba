"""A patient's three NIfTI volumes -> one ``[3, depth, S, S]`` tensor, the sequences aligned voxel for voxel.

The three series of one visit share the scanner's frame of reference but not their grids: slice
counts, thicknesses, matrices and tilts differ. So the T1+C series defines the target grid (its
slices, chosen by the depth rule, and its field of view at ``S x S``), and every sequence is sampled at
the same world positions through its own NIfTI affine. Slice ``k`` of FLAIR, T2 and T1+C then shows
the same anatomy, which the original study (fitting each sequence's depth on its own) did not ensure.

Affine arithmetic is written out elementwise in a fixed order (:func:`apply_affine`,
:func:`affine_inverse`), never as ``@``/``np.dot``/``np.linalg.inv`` (nibabel's ``apply_affine`` and
``as_closest_canonical`` use them): BLAS and LAPACK sum in an order that depends on the CPU kernel, and
the arrays must be the same bytes on any CPU (docs/reproducibility.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
from scipy import ndimage

from metastases.params import SEQUENCES, VolumeParams

STUDY_DEPTH = 20
REFERENCE_SEQUENCE = "t1c"
"""The sequence whose slices and field of view define the common grid."""


def study_depth_indices(n_slices: int) -> np.ndarray:
    """Slice indices that bring ``n_slices`` to 20 by the original study's rule.

    Fewer than 20: copies of the two middle slices are inserted in the middle until there are 20.
    20 to 40: the centre 20. Over 40: 6 slices starting at the first third, 8 around the middle and
    6 ending at the last third (these windows may overlap for 41-47 slices, as in the original).
    """
    if n_slices < 1:
        raise ValueError("a volume needs at least one slice")
    if n_slices < STUDY_DEPTH:
        indices = list(range(n_slices))
        while len(indices) < STUDY_DEPTH:
            middle = len(indices) // 2
            pair = indices[max(middle - 1, 0) : middle + 1]
            indices[middle:middle] = pair[: STUDY_DEPTH - len(indices)]
        return np.asarray(indices)
    if n_slices <= 40:
        start = (n_slices - STUDY_DEPTH) // 2
        return np.arange(start, start + STUDY_DEPTH)
    first, middle, last = n_slices // 3, n_slices // 2, (2 * n_slices) // 3
    return np.concatenate(
        [np.arange(first, first + 6), np.arange(middle - 4, middle + 4), np.arange(last - 5, last + 1)]
    )


def depth_positions(n_slices: int, params: VolumeParams) -> np.ndarray:
    """Positions (in slice indices, possibly fractional) of the ``params.depth`` output slices.

    ``study``: the original study's rule; ``resample``: evenly from the first to the last slice.
    """
    if params.depth_mode == "study":
        return study_depth_indices(n_slices).astype(float)
    return np.linspace(0, n_slices - 1, params.depth)


def normalise(
    volume: np.ndarray, mode: str, clip_percentiles: tuple[float, float], mask: np.ndarray | None = None
) -> np.ndarray:
    """Per-volume intensity normalisation: MR intensities have no absolute unit, so never a fixed window.

    The volume is clipped to its own percentiles first, so a few hot voxels cannot dominate the scale.
    ``zscore_brain``: percentiles, mean and deviation of the voxels in ``mask`` only, 0 outside it.
    """
    volume = volume.astype(np.float32)
    if mode == "none":
        return volume
    if mode == "zscore_brain" and mask is not None and mask.any():
        inside = volume[mask]
        low, high = (float(v) for v in np.percentile(inside, clip_percentiles))
        inside = np.clip(inside, low, high)
        out = np.zeros_like(volume)
        out[mask] = (inside - inside.mean()) / max(float(inside.std()), 1e-6)
        return out
    low, high = (float(v) for v in np.percentile(volume, clip_percentiles))
    volume = np.clip(volume, low, high)
    if mode == "minmax":
        return (volume - low) / max(high - low, 1e-6)
    return (volume - volume.mean()) / max(float(volume.std()), 1e-6)


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``affine`` (4 x 4) applied to float64 points ``(..., 3)``: ``i * A[:, 0] + j * A[:, 1] + k * A[:, 2]
    + A[:, 3]`` summed in that order, elementwise (``nibabel.affines.apply_affine`` is a BLAS product)."""
    a, p = np.asarray(affine, np.float64), np.asarray(points, np.float64)
    return p[..., 0, None] * a[:3, 0] + p[..., 1, None] * a[:3, 1] + p[..., 2, None] * a[:3, 2] + a[:3, 3]


def affine_inverse(affine: np.ndarray) -> np.ndarray:
    """Inverse of a 4 x 4 affine: the 3 x 3 part by its adjugate, in closed form (no LAPACK)."""
    (a, b, c), (d, e, f), (g, h, i) = (tuple(float(v) for v in row) for row in np.asarray(affine)[:3, :3])
    adjugate = np.array(
        [
            [e * i - f * h, c * h - b * i, b * f - c * e],
            [f * g - d * i, a * i - c * g, c * d - a * f],
            [d * h - e * g, b * g - a * h, a * e - b * d],
        ]
    )
    inverse = np.eye(4)
    inverse[:3, :3] = adjugate / (a * adjugate[0, 0] + b * adjugate[1, 0] + c * adjugate[2, 0])
    inverse[:3, 3] = -apply_affine(inverse, np.asarray(affine, np.float64)[:3, 3])
    return inverse


def _affine_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 4 x 4 affines, each element summed left to right."""
    return np.array([[sum(a[i, n] * b[n, j] for n in range(4)) for j in range(4)] for i in range(4)])


def _gaussian_smooth(data: np.ndarray, sigma: list[float]) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(data, sigma, mode="nearest")`` (truncate 4) with the kernel from
    :func:`math.exp`: scipy builds it with numpy's float64 ``exp``, whose SIMD path (and last bits)
    depends on the CPU."""
    for axis, sd in enumerate(sigma):
        if sd <= 0:
            continue
        radius = int(4.0 * sd + 0.5)
        phi = [math.exp(-0.5 / (sd * sd) * x * x) for x in range(-radius, radius + 1)]
        data = ndimage.correlate1d(data, np.array(phi) / math.fsum(phi), axis, mode="nearest")
    return data


def _canonical(path: str | Path) -> nib.Nifti1Image:
    """The image with its voxel axes reordered/flipped to RAS+, as ``nib.as_closest_canonical`` does,
    but with the new affine multiplied out in a fixed order."""
    image = cast(nib.Nifti1Image, nib.load(str(path)))
    orientation = nib.orientations.io_orientation(image.affine)
    if np.array_equal(orientation, [[0, 1], [1, 1], [2, 1]]):
        return image
    data = nib.orientations.apply_orientation(np.asanyarray(image.dataobj), orientation)
    flip = nib.orientations.inv_ornt_aff(orientation, image.shape)
    return nib.Nifti1Image(data, _affine_product(image.affine, flip))


HEAD_THRESHOLD = 0.1
"""A voxel is head when brighter than this share of the reference volume's 99th percentile."""
HEAD_MARGIN_MM = 6.0
"""Air kept around the head's bounding box on every side."""


def head_box(reference: nib.Nifti1Image) -> tuple[float, float, float, float]:
    """In-plane bounding box of the head in the reference's voxel indices: ``(i_low, i_high, j_low, j_high)``.

    A voxel is head when brighter than :data:`HEAD_THRESHOLD` of the volume's 99th percentile; a column
    or row of the in-plane projection counts when at least 1 % of the busiest one's voxels are head, so
    a few bright noise voxels in the air cannot widen the box. Comparisons only: the same on any CPU.
    """
    data = np.asarray(reference.dataobj, dtype=np.float32)
    threshold = HEAD_THRESHOLD * float(np.percentile(data, 99))
    projection = (data > threshold).sum(axis=2)  # (i, j): head voxels over all slices
    box: list[float] = []
    for axis in (1, 0):  # counts per i (summed over j), then per j (summed over i)
        counts = projection.sum(axis=axis)
        busy = np.flatnonzero(counts >= max(1, 0.01 * counts.max()))
        if busy.size == 0:  # nothing above the threshold: keep the whole field of view
            busy = np.array([0, counts.size - 1])
        box += [float(busy[0]), float(busy[-1])]
    return box[0], box[1], box[2], box[3]


@dataclass(frozen=True)
class GridGeometry:
    """Where the voxels of one patient's array lie in the world: enough to bring a location in the array
    (``slice, row, column``, fractional) back to RAS millimetres, and to write it down (``geometry.json``).

    ``affine`` maps the reference's canonical voxel ``(i, j, k)`` to RAS mm. Column ``c`` is voxel
    ``i = centre_i + span_i * (0.5 - (c + 0.5) / size)`` (columns run from the patient's right to left),
    row ``r`` is ``j = centre_j + span_j * (0.5 - (r + 0.5) / size)`` (anterior to posterior) and slice
    ``s`` is ``k = slices[s]`` (linearly between entries for a fractional ``s``).
    """

    affine: tuple[tuple[float, ...], ...]
    centre_i: float
    span_i: float
    centre_j: float
    span_j: float
    size: int
    slices: tuple[float, ...]

    def voxels(self, slices: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Reference voxel coordinates ``(..., 3)`` (i, j, k) of array positions (broadcast together)."""
        steps_c = 0.5 - (np.asarray(columns, np.float64) + 0.5) / self.size
        steps_r = 0.5 - (np.asarray(rows, np.float64) + 0.5) / self.size
        k = np.interp(np.asarray(slices, np.float64), np.arange(len(self.slices)), np.asarray(self.slices))
        i, j, k = np.broadcast_arrays(
            self.centre_i + self.span_i * steps_c, self.centre_j + self.span_j * steps_r, k
        )
        return np.stack([i, j, k], axis=-1)

    def world(self, slice_: float, row: float, column: float) -> tuple[float, float, float]:
        """RAS mm of one array position."""
        point = apply_affine(
            np.asarray(self.affine), self.voxels(np.asarray(slice_), np.asarray(row), np.asarray(column))
        )
        return float(point[0]), float(point[1]), float(point[2])

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> GridGeometry:
        return cls(
            affine=tuple(tuple(float(v) for v in row) for row in entry["affine"]),
            centre_i=float(entry["centre_i"]),
            span_i=float(entry["span_i"]),
            centre_j=float(entry["centre_j"]),
            span_j=float(entry["span_j"]),
            size=int(entry["size"]),
            slices=tuple(float(v) for v in entry["slices"]),
        )


def grid_geometry(reference: nib.Nifti1Image, params: VolumeParams) -> GridGeometry:
    """The output grid of :func:`target_grid` for ``reference`` (the T1+C volume, canonical RAS).

    The in-plane field of view is the reference's (``crop: none``) or the smallest square around the
    head's bounding box plus a margin (``crop: head``: the head fills about 3/4 of a scanner's field of
    view, so the same ``S`` gives a lesion about 1.3x more pixels per side). It is divided into
    ``S x S`` pixels; rows run anterior to posterior and columns from the patient's right to left (as a
    radiologist views an axial slice), slices upwards.
    """
    n_i, n_j, n_k = reference.shape[:3]
    centre_i, centre_j = (n_i - 1) / 2, (n_j - 1) / 2
    span_i, span_j = float(n_i), float(n_j)  # in voxels
    if params.crop == "head":
        spacing_i, spacing_j = (float(np.sqrt(np.sum(reference.affine[:3, a] ** 2))) for a in (0, 1))
        i_low, i_high, j_low, j_high = head_box(reference)
        side_mm = max((i_high - i_low + 1) * spacing_i, (j_high - j_low + 1) * spacing_j) + 2 * HEAD_MARGIN_MM
        centre_i, centre_j = (i_low + i_high) / 2, (j_low + j_high) / 2
        span_i, span_j = side_mm / spacing_i, side_mm / spacing_j
    return GridGeometry(
        affine=tuple(tuple(float(v) for v in row) for row in np.asarray(reference.affine, np.float64)),
        centre_i=float(centre_i),
        span_i=float(span_i),
        centre_j=float(centre_j),
        span_j=float(span_j),
        size=params.image_size,
        slices=tuple(float(v) for v in depth_positions(n_k, params)),
    )


def target_grid(reference: nib.Nifti1Image, params: VolumeParams) -> np.ndarray:
    """World (RAS mm) centres ``[depth, S, S, 3]`` of the output voxels, laid out head-up (see
    :func:`grid_geometry` for the field of view and the orientation)."""
    return grid_world(grid_geometry(reference, params), reference.affine)


def grid_world(geometry: GridGeometry, affine: np.ndarray) -> np.ndarray:
    """World (RAS mm) centres ``[depth, S, S, 3]`` of every voxel of ``geometry``."""
    size = geometry.size
    # canonical voxel axes point to the right (i), anterior (j), superior (k): flip i and j for display
    steps = 0.5 - (np.arange(size) + 0.5) / size
    columns = geometry.centre_i + geometry.span_i * steps
    rows = geometry.centre_j + geometry.span_j * steps
    k = np.asarray(geometry.slices, np.float64)
    voxels = np.stack(np.meshgrid(k, rows, columns, indexing="ij"), axis=-1)[..., ::-1]  # (i, j, k)
    return apply_affine(affine, voxels)


def sample(image: nib.Nifti1Image, world: np.ndarray) -> np.ndarray:
    """Trilinear samples of ``image`` at ``world`` points (RAS mm); outside the volume is 0.

    The image is first smoothed in-plane in proportion to the downsampling, so shrinking a 512 matrix
    to S does not alias.
    """
    data = np.asarray(image.dataobj, dtype=np.float32)
    in_plane = np.linalg.norm(image.affine[:3, :2], axis=0)
    step = [float(v) for v in world[0, 1, 1] - world[0, 0, 0]] if world.shape[1] > 1 else [0.0] * 3
    out_spacing = math.sqrt(step[0] * step[0] + step[1] * step[1] + step[2] * step[2]) / math.sqrt(2)
    sigma = [max(out_spacing / float(s) - 1.0, 0.0) * 0.5 for s in in_plane] + [0.0]
    data = _gaussian_smooth(data, sigma)
    # Rounded to 1e-6 voxel: a grid point on the first or last slice lands exactly on it rather than
    # 1e-14 outside, where map_coordinates would return 0.
    voxels = np.round(apply_affine(affine_inverse(image.affine), world), 6)
    return ndimage.map_coordinates(data, np.moveaxis(voxels, -1, 0), order=1, mode="constant", cval=0.0)


BRAIN_DEPTH_MM = 12.0
"""How far inside the head's outline the brain mask starts: scalp (fat, skin) and skull, about 1 cm."""


def brain_mask(channels: list[np.ndarray], pixel_mm: float) -> np.ndarray:
    """Voxels at least :data:`BRAIN_DEPTH_MM` inside the head's outline, slice by slice: a crude brain
    mask without a template, so that scalp fat, skin and skull do not set the intensity scale (nor
    reach the model). Head: any sequence above :data:`HEAD_THRESHOLD` of its 99th percentile, holes
    filled. Comparisons and binary morphology only: the same on any CPU."""
    head = np.zeros(channels[0].shape, bool)
    for channel in channels:
        head |= channel > HEAD_THRESHOLD * float(np.percentile(channel, 99))
    radius = max(1, round(BRAIN_DEPTH_MM / pixel_mm))
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = (x * x + y * y <= radius * radius)[None]  # in-plane only: slices are far apart
    filled = np.stack([ndimage.binary_fill_holes(plane) for plane in head])
    return ndimage.binary_erosion(filled, structure=disk)


def patient_tensor(volume_paths: Mapping[str, str | Path], params: VolumeParams) -> np.ndarray:
    """Build the ``[3, depth, size, size]`` float32 tensor of one patient (channels FLAIR, T2, T1+C)."""
    return patient_tensor_and_grid(volume_paths, params)[0]


def patient_tensor_and_grid(
    volume_paths: Mapping[str, str | Path], params: VolumeParams
) -> tuple[np.ndarray, GridGeometry]:
    """:func:`patient_tensor` and where its voxels lie (:class:`GridGeometry`)."""
    images = {sequence: _canonical(volume_paths[sequence]) for sequence in SEQUENCES}
    reference = images[REFERENCE_SEQUENCE]
    geometry = grid_geometry(reference, params)
    world = grid_world(geometry, reference.affine)
    sampled = [sample(images[sequence], world) for sequence in SEQUENCES]
    mask = None
    if params.normalise == "zscore_brain":
        spacing_i = float(np.sqrt(np.sum(reference.affine[:3, 0] ** 2)))
        mask = brain_mask(sampled, geometry.span_i * spacing_i / geometry.size)
    channels = [normalise(volume, params.normalise, params.clip_percentiles, mask) for volume in sampled]
    return np.stack(channels), geometry
