"""Where a model looked: evidence maps on the patient's array grid and the pointing game against lesion truth.

The default models are multiple-instance detectors: each feature-map cell gets a metastasis-minus-normal
logit (:func:`metastases.models.evidence_map`). Here the maps of an ensemble's members are brought back to
the array grid (``[depth, S, S]``, trilinear), averaged, and the highest location is turned into patient
coordinates through the array's :class:`~metastases.volumes.GridGeometry`. The pointing game (Zhang et
al. 2018) scores a metastasis patient as a hit when that location lies inside a true metastasis (its
radius plus a margin).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from metastases.models import evidence_map, has_evidence
from metastases.training.runtime import amp_enabled
from metastases.volumes import GridGeometry

log = logging.getLogger(__name__)

HIT_MARGIN_MM = 5.0
"""A peak counts as inside a lesion within its radius plus this margin (the arrays' slices are 5-10 mm)."""


@dataclass(frozen=True)
class Evidence:
    """One patient's evidence: ``heat`` ``[depth, S, S]`` (metastasis-minus-normal logit per voxel of the
    array grid, mean over the models) and its highest voxel ``peak`` (slice, row, column)."""

    patient: str
    heat: np.ndarray
    peak: tuple[int, int, int]


def _grid_maps(model: nn.Module, images: torch.Tensor, depth: int, size: int) -> torch.Tensor:
    maps = evidence_map(model, images).float()  # [B, d, h, w]
    return F.interpolate(maps[:, None], size=(depth, size, size), mode="trilinear", align_corners=False)[:, 0]


@torch.inference_mode()
def ensemble_evidence(
    models: list[nn.Module], loader: DataLoader, device: torch.device, *, depth: int
) -> list[np.ndarray]:
    """``[depth, S, S]`` evidence per sample (loader order): the mean of the models' maps on the array grid.

    Args:
        models: multiple-instance models (each has ``evidence``), in eval mode.
        loader: unshuffled samples (``[60, S, S]`` or ``[3, D, S, S]``).
        device: where the models run.
        depth: slices of the array grid (20).
    """
    heats: list[np.ndarray] = []
    amp = amp_enabled(device)
    for images, _ in loader:
        images = images.to(device)
        size = int(images.shape[-1])
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            maps = [_grid_maps(model.to(device).eval(), images, depth, size) for model in models]
        mean = torch.stack(maps).mean(dim=0)
        heats += [m.cpu().numpy().astype(np.float32) for m in mean]
    return heats


def peak_of(heat: np.ndarray) -> tuple[int, int, int]:
    """The (slice, row, column) of the highest evidence (the first one on ties)."""
    index = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(index[0]), int(index[1]), int(index[2])


def evidence_for(patients: list[str], heats: list[np.ndarray]) -> dict[str, Evidence]:
    return {p: Evidence(p, h, peak_of(h)) for p, h in zip(patients, heats, strict=True)}


def can_explain(models: list[nn.Module]) -> bool:
    return bool(models) and all(has_evidence(m) for m in models)


def ras_to_lps(point: tuple[float, float, float]) -> tuple[float, float, float]:
    return -point[0] + 0.0, -point[1] + 0.0, point[2]


def peak_lps(geometry: GridGeometry, peak: tuple[int, int, int]) -> tuple[float, float, float]:
    """Patient coordinates (DICOM LPS mm) of an array voxel."""
    return ras_to_lps(geometry.world(*peak))


def _distance(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


@dataclass(frozen=True)
class PointingGame:
    localisation: float | None
    """Share of the scored metastasis patients whose strongest evidence lies in a metastasis."""
    patients: int
    """Metastasis patients scored."""
    hits: dict[str, bool]


def pointing_game(
    evidence: dict[str, Evidence],
    labels: dict[str, int],
    geometry: dict[str, GridGeometry],
    lesions: pd.DataFrame,
    *,
    margin_mm: float = HIT_MARGIN_MM,
) -> PointingGame:
    """Share of metastasis patients whose highest evidence lies inside one of their metastases.

    A hit: the peak's distance to a metastasis centre is at most its radius + ``margin_mm``. Patients
    without geometry or without a metastasis in ``lesions`` are not scored (counted in ``unscored``).

    Args:
        evidence: per patient, the evidence and its peak.
        labels: per patient, 1 for metastases.
        geometry: per patient, where the array voxels lie.
        lesions: lesion truth (:func:`metastases.lesion_truth.read_lesions`).
        margin_mm: tolerance added to every radius.
    """
    metastases = lesions[lesions["kind"] == "metastasis"]
    hits, scored, unscored = 0, 0, 0
    per_patient: dict[str, bool] = {}
    for patient, item in evidence.items():
        if labels.get(patient) != 1:
            continue
        rows = metastases[metastases["patient"] == patient]
        if patient not in geometry or rows.empty:
            unscored += 1
            continue
        point = peak_lps(geometry[patient], item.peak)
        hit = any(
            _distance(point, (r.x_mm, r.y_mm, r.z_mm)) <= r.diameter_mm / 2 + margin_mm
            for r in rows.itertuples()
        )
        per_patient[patient] = hit
        hits += hit
        scored += 1
    if unscored:
        log.warning("localisation: %d metastasis patient(s) without lesion truth or geometry not scored",
                    unscored)  # fmt: skip
    return PointingGame(hits / scored if scored else None, scored, per_patient)


def lesions_in_view(
    geometry: GridGeometry, lesions: pd.DataFrame, patient: str, slice_index: int
) -> list[tuple[float, float, float, str]]:
    """Lesions of ``patient`` whose centre lies within half a slice gap of array slice ``slice_index``, as
    ``(row, column, radius_px, kind)`` on the array grid, for drawing."""
    rows = lesions[lesions["patient"] == patient]
    if rows.empty:
        return []
    inverse = _inverse_affine(geometry)
    found = []
    slices = np.asarray(geometry.slices)
    for r in rows.itertuples():
        ras = np.array([-r.x_mm, -r.y_mm, r.z_mm])
        i, j, k = (inverse[:3, :3] @ ras) + inverse[:3, 3]
        s = float(np.interp(k, slices, np.arange(len(slices)))) if slices[-1] > slices[0] else 0.0
        if abs(s - slice_index) > 0.75:
            continue
        column = (0.5 - (i - geometry.centre_i) / geometry.span_i) * geometry.size - 0.5
        row = (0.5 - (j - geometry.centre_j) / geometry.span_j) * geometry.size - 0.5
        pixel_mm = _distance(geometry.world(slice_index, 0, 0), geometry.world(slice_index, 0, 1))
        found.append((float(row), float(column), r.diameter_mm / 2 / pixel_mm, str(r.kind)))
    return found


def _inverse_affine(geometry: GridGeometry) -> np.ndarray:
    return np.linalg.inv(np.asarray(geometry.affine, np.float64))
