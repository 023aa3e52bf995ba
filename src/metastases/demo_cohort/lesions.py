"""Metastases and their mimics, as partial-volume fractions on the template grid.

A metastasis is a ball with an irregular outline: an enhancing rim around a necrotic core when it is
large (>= 10 mm), solid and enhancing when small, with vasogenic oedema that spreads only through
white matter. A mimic is a non-enhancing white-matter spot (as in small-vessel disease): bright
on FLAIR and T2 like a small metastasis but dark on T1+C, so no single sequence separates the classes.
A vessel (site b only, :mod:`metastases.demo_cohort.site`) is a thin enhancing tube in a sulcus or the
sylvian fissure: bright on T1+C like a metastasis's rim, without oedema, a flow void on FLAIR and T2.
All sizes are millimetres in template space.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import cast

import numpy as np
from scipy import ndimage

from metastases.demo_cohort.anatomy import Template, dot3, gaussian_smooth, transform

Coverage = Callable[[np.ndarray, float], np.ndarray]
"""``inside(points_mm (n, 3), margin_mm) -> (n,) bool``: which template points every series images."""


@dataclasses.dataclass(frozen=True)
class Lesion:
    """One lesion in template RAS mm. ``core_radius`` is 0 for a solid lesion; ``oedema_radius`` 0 for none.

    ``lobes`` ``(k, 4)``: unit directions and relative amplitudes that make the outline irregular.
    """

    kind: str  # "metastasis" | "mimic" | "vessel"
    centre: np.ndarray
    radius: float
    core_radius: float
    oedema_radius: float
    lobes: np.ndarray


@dataclasses.dataclass(frozen=True)
class LesionFractions:
    """Fractions in ``box`` (a tuple of slices of the template grid): ``lesion`` (whole lesion, incl. core),
    ``core`` (necrosis, subset of lesion), ``oedema`` (oedematous white matter, outside the lesion)."""

    box: tuple[slice, slice, slice]
    lesion: np.ndarray
    core: np.ndarray
    oedema: np.ndarray


def _lobes(rng: np.random.Generator, amount: float) -> np.ndarray:
    directions = rng.normal(size=(3, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return np.column_stack([directions, rng.uniform(-amount, amount, size=3)])


def _pick_centre(
    rng: np.random.Generator,
    candidates: np.ndarray,
    radius: float,
    placed: list[Lesion],
    inside: Coverage,
) -> np.ndarray:
    """A candidate seen by every series and clear of earlier lesions (falls back gracefully)."""
    visible = candidates[inside(candidates, radius + 2.0)]
    pool = visible if len(visible) else candidates
    for _ in range(50):
        centre = pool[rng.integers(len(pool))].astype(np.float64) + rng.uniform(-0.5, 0.5, size=3)
        if all(_distance(centre, other.centre) > radius + other.oedema_radius + 3 for other in placed):
            return centre
    return centre


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two 3-vectors, summed left to right (``np.linalg.norm`` of a vector is BLAS)."""
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    return math.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])


def sample_metastases(rng: np.random.Generator, template: Template, inside: Coverage) -> list[Lesion]:
    """1 to 4 metastases, 80 % at the grey/white junction: one dominant lesion of 10 to 20 mm (as in most
    patients presenting with brain metastases), the others 3 to 20 mm across, log-uniform (mostly small).

    Without the dominant lesion most patients carried only lesions of a few pixels at the pipeline's
    default resolution, and no model, trivial or not, rose above chance on a 240-patient cohort.
    """
    count = int(rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1]))
    lesions: list[Lesion] = []
    for index in range(count):
        if index == 0:
            diameter = float(rng.uniform(10.0, 20.0))
        else:
            diameter = math.exp(float(rng.uniform(math.log(3.0), math.log(20.0))))
        radius = diameter / 2
        core = radius - rng.uniform(1.5, 3.0) if diameter >= 10.0 else 0.0
        spread = rng.uniform(1.6, 2.8) if diameter >= 6.0 else rng.uniform(1.0, 1.8)
        oedema = radius * spread + (2.0 if diameter >= 6.0 else 0.0)
        candidates = template.junction_mm if rng.random() < 0.8 else template.deep_wm_mm
        centre = _pick_centre(rng, candidates, oedema, lesions, inside)
        lesions.append(Lesion("metastasis", centre, radius, max(core, 0.0), oedema, _lobes(rng, 0.18)))
    return lesions


def sample_mimics(rng: np.random.Generator, template: Template, inside: Coverage, count: int) -> list[Lesion]:
    """``count`` white-matter spots 2 to 12 mm across (log-uniform), mostly in deep white matter.

    The larger ones (confluent small-vessel disease) are as bright on FLAIR as a metastasis's oedema,
    so the FLAIR intensity histogram alone cannot tell the classes apart.
    """
    spots: list[Lesion] = []
    for _ in range(count):
        radius = math.exp(float(rng.uniform(math.log(2.0), math.log(12.0)))) / 2
        candidates = template.deep_wm_mm if rng.random() < 0.7 else template.junction_mm
        centre = _pick_centre(rng, candidates, radius, spots, inside)
        spots.append(Lesion("mimic", centre, radius, 0.0, 0.0, _lobes(rng, 0.3)))
    return spots


_vessel_cache: list[tuple[Template, np.ndarray]] = []


def vessel_sites_mm(template: Template) -> np.ndarray:
    """Candidate vessel centres ``(n, 3)`` RAS mm: CSF beside cortex inside a sulcus (mostly brain
    tissue within a few mm) less than 20 mm from the dura, or in the sylvian fissure (middle cerebral
    artery branches); above z = -45 mm, every 8th. Cached for the last template."""
    if _vessel_cache and _vessel_cache[0][0] is template:
        return _vessel_cache[0][1]
    fractions = template.fractions
    # on a 2 mm grid: distance from the dura, and how much brain tissue surrounds a point
    depth = ndimage.distance_transform_edt(~(fractions["dura"][::2, ::2, ::2] > 0.3), sampling=2.0)
    tissue = gaussian_smooth((fractions["gm"] + fractions["wm"])[::2, ::2, ::2], 1.5)
    voxels = np.argwhere((fractions["csf"] > 0.4) & (fractions["gm"] > 0.15))
    coarse = tuple((voxels // 2).T)
    in_sulcus = (tissue[coarse] > 0.6) & (depth[coarse] < 20.0)
    mm = transform(voxels, template.affine[:3, :3], template.affine[:3, 3])
    x, y, z = np.abs(mm[:, 0]), mm[:, 1], mm[:, 2]
    sylvian = (x > 28) & (x < 48) & (y > -25) & (y < 15) & (z > -15) & (z < 20)
    sites = mm[(in_sulcus | sylvian) & (z > -45)][::8].astype(np.float32)
    _vessel_cache[:] = [(template, sites)]
    return sites


def sample_vessels(
    rng: np.random.Generator, template: Template, inside: Coverage, *, count: int, avoid: list[Lesion]
) -> list[Lesion]:
    """``count`` enhancing vessels: straight tubes 6 to 11 mm long and 1.6 to 3 mm across along a random
    direction, centred at :func:`vessel_sites_mm`, clear of the lesions in ``avoid``.

    Args:
        rng: the patient's generator.
        template: the brain template.
        inside: which template points every series images.
        count: number of vessels.
        avoid: lesions already placed (the vessels keep clear of them and their oedema).

    A vessel is a :class:`Lesion` of kind ``vessel`` whose ``radius`` is half its length; two lobes
    perpendicular to its axis shrink the cross-section to ``radius * (1 + lobe amplitude)``.
    """
    candidates = vessel_sites_mm(template)
    placed = list(avoid)
    vessels: list[Lesion] = []
    for _ in range(count):
        half_length = float(rng.uniform(3.0, 5.5))
        across = float(rng.uniform(0.8, 1.5))
        centre = _pick_centre(rng, candidates, half_length, placed, inside)
        axis = _unit(rng.normal(size=3))
        # the coordinate axis least aligned with the vessel gives the first perpendicular direction
        helper = np.eye(3)[int(np.argmin(np.abs(axis)))]
        first = _unit(np.cross(axis, helper))
        second = np.cross(axis, first)
        shrink = across / half_length - 1.0
        lobes = np.array([[*first, shrink], [*second, shrink]])
        vessel = Lesion("vessel", centre, half_length, 0.0, 0.0, lobes)
        vessels.append(vessel)
        placed.append(vessel)
    return vessels


def _unit(vector: np.ndarray) -> np.ndarray:
    """``vector`` / its length, summed left to right (``np.linalg.norm`` of a vector is BLAS)."""
    v = np.asarray(vector, np.float64)
    return v / math.sqrt(float(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]))


def _edge(signed_depth: np.ndarray) -> np.ndarray:
    """Fraction of a 1 mm voxel inside a surface at ``signed_depth`` mm (positive inside)."""
    return np.clip(signed_depth + 0.5, 0.0, 1.0)


def lesion_fractions(lesion: Lesion, template: Template) -> LesionFractions:
    """Rasterise ``lesion`` on the template grid, in the smallest box that holds it and its oedema."""
    reach = max(lesion.radius, lesion.oedema_radius) * 1.4 + 2.0
    centre_voxel = template.mm_to_voxel(lesion.centre)
    lo = np.maximum(np.floor(centre_voxel - reach).astype(int), 0)
    hi = np.minimum(np.ceil(centre_voxel + reach).astype(int) + 1, template.shape)
    box = cast(tuple[slice, slice, slice], tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)))
    grid = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij"), axis=-1)
    offset = (grid - centre_voxel).astype(np.float32)  # 1 mm voxels: voxel offsets are mm
    # Sums in a fixed order, elementwise: a matrix product would go through BLAS (CPU-dependent order).
    distance = np.sqrt(offset[..., 0] ** 2 + offset[..., 1] ** 2 + offset[..., 2] ** 2)
    unit = offset / np.maximum(distance, np.float32(1e-3))[..., None]
    irregular = np.ones_like(distance)
    for lobe in lesion.lobes.astype(np.float32):
        irregular += dot3(unit, lobe[:3]) ** 2 * lobe[3]
    scaled = distance / irregular
    whole = _edge(lesion.radius - scaled)
    core = _edge(lesion.core_radius - scaled) if lesion.core_radius > 0 else np.zeros_like(whole)
    if lesion.oedema_radius > lesion.radius:
        # Vasogenic oedema fades outwards and follows white matter (it spares the cortex).
        fade = np.clip((lesion.oedema_radius - scaled) / (0.4 * lesion.oedema_radius), 0.0, 1.0)
        oedema = fade * template.fractions["wm"][box] * (1.0 - whole)
    else:
        oedema = np.zeros_like(whole)
    if lesion.kind == "mimic":
        whole = whole * template.fractions["wm"][box]
    return LesionFractions(box, whole.astype(np.float32), core.astype(np.float32), oedema.astype(np.float32))
