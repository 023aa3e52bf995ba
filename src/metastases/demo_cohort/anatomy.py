"""The brain template and each synthetic patient's head: tissue fractions, skull/scalp shell, transform.

The anatomy is nilearn's shipped MNI ICBM152 2009 template (T1, grey- and white-matter maps, 1 mm,
197 x 233 x 189 voxels, RAS millimetres), read straight from the installed package: no download.
Every array in :class:`Template` has the template's voxel grid and holds a tissue fraction in [0, 1].

Geometry here is summed in a fixed order (:func:`transform`, :func:`matmul3`, :func:`inverse3`), never
through BLAS/LAPACK (``@``, ``np.linalg``), whose summation order depends on the CPU kernel: the cohort's
bytes must be the same on any CPU (docs/reproducibility.md).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from scipy import ndimage

from metastases.errors import UserError

TEMPLATE_PACKAGE = "nilearn"
TEMPLATE_FILES = {
    name: f"datasets/data/mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz" for name in ("t1", "gm", "wm")
}
TISSUES: tuple[str, ...] = ("csf", "gm", "wm", "dura", "skull", "marrow", "fat", "skin")
"""Tissue classes whose fractions make up every template voxel (the rest is air)."""

# Layers of the head outside the brain envelope, as (tissue, inner mm, outer mm) from the envelope surface.
# Thicknesses are typical adult values; the diploe (marrow) sits inside the skull's tables.
SHELL_LAYERS: tuple[tuple[str, float, float], ...] = (
    ("csf", 0.0, 1.5),
    ("dura", 1.5, 2.5),
    ("skull", 2.5, 4.0),
    ("marrow", 4.0, 6.0),
    ("skull", 6.0, 7.5),
    ("fat", 7.5, 12.5),
    ("skin", 12.5, 14.5),
)


@dataclasses.dataclass(frozen=True)
class Template:
    """Tissue fractions on the template grid plus where lesions may be seeded.

    ``stack`` is float32 ``(len(TISSUES), x, y, z)`` on the (cropped) template grid; ``fractions[t]`` is
    its slice for tissue ``t``; ``affine`` maps voxel indices to RAS mm.
    ``junction_mm`` / ``deep_wm_mm`` are ``(n, 3)`` RAS mm of candidate lesion centres at the grey/white
    junction and in deep white matter.
    """

    stack: np.ndarray
    fractions: dict[str, np.ndarray]
    affine: np.ndarray
    junction_mm: np.ndarray
    deep_wm_mm: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.fractions["wm"].shape

    def mm_to_voxel(self, points_mm: np.ndarray) -> np.ndarray:
        """RAS mm ``(..., 3)`` -> fractional voxel indices ``(..., 3)``."""
        inverse = inverse3(self.affine[:3, :3])
        return transform(points_mm, inverse, -transform(self.affine[:3, 3], inverse))


def matmul3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 3 x 3 float64 matrices, each element summed left to right."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rows = [[a[i, 0] * b[0, j] + a[i, 1] * b[1, j] + a[i, 2] * b[2, j] for j in range(3)] for i in range(3)]
    return np.array(rows)


def inverse3(m: np.ndarray) -> np.ndarray:
    """Inverse of a 3 x 3 float64 matrix by its adjugate (no LAPACK)."""
    (a, b, c), (d, e, f), (g, h, i) = (tuple(float(v) for v in row) for row in np.asarray(m, np.float64))
    adjugate = np.array(
        [
            [e * i - f * h, c * h - b * i, b * f - c * e],
            [f * g - d * i, a * i - c * g, c * d - a * f],
            [d * h - e * g, b * g - a * h, a * e - b * d],
        ]
    )
    return adjugate / (a * adjugate[0, 0] + b * adjugate[1, 0] + c * adjugate[2, 0])


def transform(points: np.ndarray, matrix: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """``points @ matrix.T + offset`` for points ``(..., 3)``, elementwise in a fixed order (no BLAS).

    Float points keep their dtype (the matrix is cast to it); integer points become float64.
    """
    points = np.asarray(points)
    dtype = points.dtype if np.issubdtype(points.dtype, np.floating) else np.dtype(np.float64)
    points, m = points.astype(dtype, copy=False), np.asarray(matrix).astype(dtype)
    out = points[..., 0, None] * m[:, 0] + points[..., 1, None] * m[:, 1] + points[..., 2, None] * m[:, 2]
    if offset is not None:
        out += np.asarray(offset).astype(dtype)
    return out


def dot3(points: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``points @ vector`` for points ``(..., 3)``, summed left to right in the points' dtype."""
    v = np.asarray(vector).astype(points.dtype)
    return points[..., 0] * v[0] + points[..., 1] * v[1] + points[..., 2] * v[2]


def gaussian_smooth(data: np.ndarray, sigma: float, mode: str = "reflect") -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(data, sigma, mode=mode)`` (truncate 4) with the kernel from
    :func:`math.exp`: numpy's float64 ``exp`` takes a CPU-dependent SIMD path (it differs under
    ``NPY_DISABLE_CPU_FEATURES``), scipy builds its kernel with it."""
    radius = int(4.0 * sigma + 0.5)
    phi = [math.exp(-0.5 / (sigma * sigma) * x * x) for x in range(-radius, radius + 1)]
    weights = np.array(phi) / math.fsum(phi)
    out = data
    for axis in range(data.ndim):
        out = ndimage.correlate1d(out, weights, axis, mode=mode)
    return out


def _read(name: str) -> tuple[np.ndarray, np.ndarray]:
    """One shipped template map as uint8 ``(197, 233, 189)`` and its voxel -> RAS mm affine."""
    # find_spec locates the installed package without importing it (importing nilearn takes seconds).
    spec = importlib.util.find_spec(TEMPLATE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the brain template needs the {TEMPLATE_PACKAGE} package; run `make install`")
    image = cast(nib.Nifti1Image, nib.load(Path(spec.submodule_search_locations[0]) / TEMPLATE_FILES[name]))
    return np.asarray(image.dataobj), image.affine


def _head_distance(brain: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """Distance in mm outside a smooth, sulcus-free envelope of ``brain`` (0 inside it), and the box
    holding the whole head (envelope + shell).

    Computed on a 2 mm grid and interpolated back: the shell needs millimetre accuracy at most, and the
    full-resolution transform costs seconds per process.
    """
    coarse = gaussian_smooth(brain[::2, ::2, ::2].astype(np.float32), 2.0) > 0.25
    distance = ndimage.distance_transform_edt(~coarse, sampling=2.0).astype(np.float32)
    head = np.argwhere(distance <= SHELL_LAYERS[-1][2] + 2.0)
    lo = np.maximum(head.min(0) - 1, 0)
    hi = np.minimum(head.max(0) + 2, distance.shape)
    full = ndimage.zoom(distance[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))], 2.0, order=1)
    # Coarse voxel i sits at fine voxel 2i; clip the box to the fine grid.
    stop = np.minimum(2 * lo + np.asarray(full.shape), brain.shape)
    box = cast(
        tuple[slice, slice, slice], tuple(slice(int(2 * a), int(b)) for a, b in zip(lo, stop, strict=True))
    )
    return np.ascontiguousarray(full[tuple(slice(0, b.stop - b.start) for b in box)]), box


def _ramp(distance: np.ndarray, inner: float, outer: float) -> np.ndarray:
    """Fraction of a 1 mm voxel lying between ``inner`` and ``outer`` mm (linear partial volume)."""
    return np.clip(np.minimum(distance - inner, outer - distance) + 0.5, 0.0, 1.0)


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Read the shipped template and derive tissue fractions and the head shell (cached per process).

    The grid is cropped to the head (about 185 x 222 x 180 voxels), which keeps the per-patient work small.
    """
    t1_raw, affine = _read("t1")
    distance, box = _head_distance(t1_raw > 0)
    t1 = t1_raw[box].astype(np.float32) / 255.0
    affine = affine.copy()
    affine[:3, 3] = transform(np.array([b.start for b in box], float), affine[:3, :3], affine[:3, 3])
    stack = np.zeros((len(TISSUES), *t1.shape), np.float32)
    fractions = {tissue: stack[k] for k, tissue in enumerate(TISSUES)}
    fractions["gm"][:] = _read("gm")[0][box] / np.float32(255.0)
    fractions["wm"][:] = _read("wm")[0][box] / np.float32(255.0)
    brain = (t1 > 0).astype(np.float32)
    rest = np.clip(brain - fractions["gm"] - fractions["wm"], 0.0, 1.0)
    # Brainstem and cerebellar white matter are missing from the WM map; their T1 signal is high,
    # so the unexplained remainder goes to WM where T1 is bright and to CSF where it is dark.
    whiteness = np.clip((t1 - 0.35) / 0.3, 0.0, 1.0)
    fractions["wm"] += rest * whiteness
    fractions["csf"][:] = rest * (1.0 - whiteness)
    outside = 1.0 - brain
    for tissue, inner, outer in SHELL_LAYERS:
        # CSF also fills the gaps between the brain and its envelope (distance 0 there).
        fractions[tissue] += _ramp(distance, -10.0 if tissue == "csf" else inner, outer) * outside

    gm, wm = fractions["gm"], fractions["wm"]
    junction = (gm > 0.35) & (gm < 0.65) & (wm > 0.3)
    deep_wm = ndimage.binary_erosion(wm > 0.9, iterations=4)
    to_mm = lambda mask: transform(np.argwhere(mask), affine[:3, :3], affine[:3, 3]).astype(np.float32)  # noqa: E731
    junction_mm, deep_wm_mm = to_mm(junction), to_mm(deep_wm)
    return Template(
        stack=stack,
        fractions=fractions,
        affine=affine,
        # Seeds stay above the template's lower cut-off (z = -72 mm) so oedema never reaches the edge;
        # every 8th candidate is plenty (thousands) and keeps coverage checks cheap.
        junction_mm=junction_mm[junction_mm[:, 2] > -45][::8],
        deep_wm_mm=deep_wm_mm[deep_wm_mm[:, 2] > -45][::8],
    )


BRAIN_CENTRE_MM = np.array([0.0, -17.0, 5.0])
"""Centre of the template brain's bounding box, RAS mm."""


@dataclasses.dataclass(frozen=True)
class HeadTransform:
    """Where a patient's head lies in the scanner: patient RAS ``x`` -> template RAS ``u``.

    ``q = inv(linear) @ (x - translation)`` undoes the rigid+scale placement and
    ``u = q + sum_m amplitude_m * sin(wave_m . q + phase_m)`` adds a smooth deformation (a few mm).
    """

    linear: np.ndarray  # (3, 3) rotation @ diag(scale)
    translation: np.ndarray  # (3,) mm
    waves: np.ndarray  # (m, 3) rad/mm
    amplitudes: np.ndarray  # (m, 3) mm
    phases: np.ndarray  # (m,) rad

    def displacement(self, q: np.ndarray) -> np.ndarray:
        """Deformation at template points ``q`` ``(..., 3)`` mm -> ``(..., 3)`` mm."""
        out = np.zeros_like(q)
        for wave, amplitude, phase in zip(self.waves, self.amplitudes, self.phases, strict=True):
            out += np.sin(dot3(q, wave) + phase)[..., None] * amplitude.astype(q.dtype)
        return out

    def to_template(self, x_ras: np.ndarray) -> np.ndarray:
        """Patient RAS mm ``(..., 3)`` -> template RAS mm ``(..., 3)``."""
        q = transform(x_ras - self.translation.astype(x_ras.dtype), inverse3(self.linear))
        return q + self.displacement(q)

    def to_patient(self, u_ras: np.ndarray) -> np.ndarray:
        """Template RAS mm -> patient RAS mm, inverting the deformation to first order (error << 1 mm)."""
        q = u_ras - self.displacement(u_ras)
        return transform(q, self.linear, self.translation)


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    rx, ry, rz = (math.radians(float(a)) for a in angles_deg)
    cx, cy, cz = math.cos(rx), math.cos(ry), math.cos(rz)
    sx, sy, sz = math.sin(rx), math.sin(ry), math.sin(rz)
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return matmul3(matmul3(about_z, about_y), about_x)


def random_head(rng: np.random.Generator, n_waves: int = 4) -> HeadTransform:
    """A random head: nod +-8 deg, roll +-4, yaw +-5; scale 0.86-0.98 (the MNI brain is larger than
    average) with +-3 % per axis; shift of a few mm; smooth deformation of at most ~3 mm."""
    angles = rng.uniform([-8, -4, -5], [8, 4, 5])
    scale = rng.uniform(0.86, 0.98) * rng.uniform(0.97, 1.03, size=3)
    linear = _rotation(angles) * scale[None, :]  # rotation @ diag(scale)
    translation = rng.uniform([-4, -6, -6], [4, 6, 6])
    directions = rng.normal(size=(n_waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = rng.uniform(70.0, 160.0, size=n_waves)
    waves = directions * (2 * np.pi / wavelengths)[:, None]
    amplitudes = rng.uniform(-0.8, 0.8, size=(n_waves, 3))
    phases = rng.uniform(0, 2 * np.pi, size=n_waves)
    return HeadTransform(linear, translation, waves, amplitudes, phases)


def tilted_head(head: HeadTransform, angles_deg: np.ndarray) -> HeadTransform:
    """``head`` rotated further about the scanner's origin by ``angles_deg`` (about x, y, z, as in
    :func:`random_head`): a site that positions heads differently. The deformation is unchanged."""
    rotation = _rotation(angles_deg)
    return dataclasses.replace(
        head, linear=matmul3(rotation, head.linear), translation=transform(head.translation, rotation)
    )
