"""Metastases and their mimics, as partial-volume fractions on the template grid.

A metastasis is a ball with an irregular outline: an enhancing rim around a necrotic core when it is
large (>= 10 mm), solid and enhancing when small, with vasogenic oedema that spreads only through
white matter. A mimic is a non-enhancing white-matter spot (as in small-vessel disease): bright
on FLAIR and T2 like a small metastasis but dark on T1+C, so no single sequence separates the classes.
All sizes are millimetres in template space.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import cast

import numpy as np

from metastases.demo_cohort.anatomy import Template, dot3

Coverage = Callable[[np.ndarray, float], np.ndarray]
"""``inside(points_mm (n, 3), margin_mm) -> (n,) bool``: which template points every series images."""


@dataclasses.dataclass(frozen=True)
class Lesion:
    """One lesion in template RAS mm. ``core_radius`` is 0 for a solid lesion; ``oedema_radius`` 0 for none.

    ``lobes`` ``(k, 4)``: unit directions and relative amplitudes that make the outline irregular.
    """

    kind: str  # "metastasis" | "mimic"
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
