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
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from metastases.models import evidence_map, has_evidence
from metastases.params import SEQUENCES
from metastases.training.checkpoint import Ensemble
from metastases.training.dataset import PatientArrays
from metastases.training.loop import make_loader
from metastases.training.runtime import amp_enabled
from metastases.volumes import GridGeometry

log = logging.getLogger(__name__)

HIT_MARGIN_MM = 5.0
"""A peak counts as inside a lesion within its radius plus this margin (the arrays' slices are 5-10 mm)."""


@dataclass(frozen=True)
class Evidence:
    """One patient's evidence: ``heat`` ``[depth, S, S]`` (metastasis-minus-normal logit per voxel of the
    array grid, mean over the models), its highest voxel ``peak`` (slice, row, column) and ``centre``, the
    sub-voxel centre of the evidence around the peak (:func:`evidence_centre`): where the model looked."""

    patient: str
    heat: np.ndarray
    peak: tuple[int, int, int]
    centre: tuple[float, float, float]


def evidence_centre(heat: np.ndarray, peak: tuple[int, int, int]) -> tuple[float, float, float]:
    """Centre of mass of the evidence above half-way from the volume's median to its maximum, within one
    slice and ``S / 32`` pixels of the peak.

    Slices are 5-10 mm apart and the detectors' cells 4-8 pixels wide, so the single highest voxel can lie
    several millimetres from the middle of what the model responded to; the centre of the response is a
    sub-voxel estimate (as a centroid refines a detection peak). Chosen on the out-of-fold maps of the
    demo cohort among four window/threshold variants (README, measured numbers).
    """
    depth, size = heat.shape[0], heat.shape[-1]
    half = [1, max(1, size // 32), max(1, size // 32)]
    low = [max(0, p - h) for p, h in zip(peak, half, strict=True)]
    high = [min(n, p + h + 1) for p, h, n in zip(peak, half, (depth, size, size), strict=True)]
    window = heat[low[0] : high[0], low[1] : high[1], low[2] : high[2]].astype(np.float64)
    base = float(np.median(heat))
    weight = np.clip(window - (base + 0.5 * (float(heat.max()) - base)), 0.0, None)
    if weight.sum() <= 0:
        return float(peak[0]), float(peak[1]), float(peak[2])
    grids = np.indices(window.shape)
    centre = [float((g * weight).sum() / weight.sum()) + lo for g, lo in zip(grids, low, strict=True)]
    return centre[0], centre[1], centre[2]


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


def array_depth(ensemble: Ensemble) -> int:
    """Slices of the ensemble's array grid: ``D`` of ``[3, D, S, S]``, or ``60 / 3`` of the 2D layout."""
    shape = ensemble.input_shape
    return shape[1] if ensemble.dim == "3d" else shape[0] // len(SEQUENCES)


def peak_of(heat: np.ndarray) -> tuple[int, int, int]:
    """The (slice, row, column) of the highest evidence (the first one on ties)."""
    index = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(index[0]), int(index[1]), int(index[2])


def make_evidence(patient: str, heat: np.ndarray) -> Evidence:
    peak = peak_of(heat)
    return Evidence(patient, heat, peak, evidence_centre(heat, peak))


def evidence_for(patients: list[str], heats: list[np.ndarray]) -> dict[str, Evidence]:
    return {p: make_evidence(p, h) for p, h in zip(patients, heats, strict=True)}


def explain_patients(
    models: list[nn.Module], array_dir: Path, patients: pd.DataFrame, *, depth: int, device: torch.device,
    batch_size: int,
) -> dict[str, Evidence]:  # fmt: skip
    """Each of ``patients``' evidence: the mean map of ``models`` over its arrays (``depth`` slices)."""
    loader = make_loader(PatientArrays(array_dir, patients), batch_size, False, 0, 0, device)
    heats = ensemble_evidence(models, loader, device, depth=depth)
    return evidence_for([str(p) for p in patients["patient"]], heats)


def can_explain(models: list[nn.Module]) -> bool:
    return bool(models) and all(has_evidence(m) for m in models)


def ras_to_lps(point: tuple[float, float, float]) -> tuple[float, float, float]:
    return -point[0] + 0.0, -point[1] + 0.0, point[2]


def peak_lps(geometry: GridGeometry, position: tuple[float, float, float]) -> tuple[float, float, float]:
    """Patient coordinates (DICOM LPS mm) of an array position (slice, row, column; fractional or not)."""
    return ras_to_lps(geometry.world(*position))


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
    """Share of metastasis patients whose evidence lies inside one of their metastases.

    A hit: the distance of the evidence's centre (:attr:`Evidence.centre`) to a metastasis centre is at
    most its radius + ``margin_mm``. Patients without geometry or without a metastasis in ``lesions`` are
    not scored (counted in ``unscored``).

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
        point = peak_lps(geometry[patient], item.centre)
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
    pixel_mm = _distance(geometry.world(slice_index, 0, 0), geometry.world(slice_index, 0, 1))
    for r in rows.itertuples():
        ras = np.array([-r.x_mm, -r.y_mm, r.z_mm])
        i, j, k = (inverse[:3, :3] @ ras) + inverse[:3, 3]
        s = float(np.interp(k, slices, np.arange(len(slices)))) if slices[-1] > slices[0] else 0.0
        if abs(s - slice_index) > 0.75:
            continue
        column = (0.5 - (i - geometry.centre_i) / geometry.span_i) * geometry.size - 0.5
        row = (0.5 - (j - geometry.centre_j) / geometry.span_j) * geometry.size - 0.5
        found.append((float(row), float(column), r.diameter_mm / 2 / pixel_mm, str(r.kind)))
    return found


def _inverse_affine(geometry: GridGeometry) -> np.ndarray:
    return np.linalg.inv(np.asarray(geometry.affine, np.float64))
