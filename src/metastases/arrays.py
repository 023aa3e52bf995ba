"""Build and read the per-patient training arrays (one ``.npy`` per patient plus an ``index.csv``).

One file per patient, loaded memory-mapped, so a 512-geometry cohort streams from disk instead of
having to fit in RAM. Arrays are float16: normalised intensities need no more precision.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from metastases.atomic import save_npy, write_csv, write_json
from metastases.errors import UserError
from metastases.params import CLASSES, SEQUENCES, VolumeParams
from metastases.volumes import GridGeometry, patient_tensor_and_grid

log = logging.getLogger(__name__)

DIMS = ("2d", "3d")
"""``2d``: ``[3 * depth, S, S]`` (sequences x slices as channels); ``3d``: ``[3, depth, S, S]``."""


def read_manifest(interim_dir: Path) -> pd.DataFrame:
    """The ingested patients whose three sequences are present (``status == ok``)."""
    manifest_path = interim_dir / "manifest.csv"
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path} not found: run the ingest stage first (dvc repro ingest)")
    manifest = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    missing = {"patient", "label", "status", *(f"{s}_file" for s in SEQUENCES)} - set(manifest.columns)
    if missing:
        raise UserError(f"{manifest_path}: missing column(s) {', '.join(sorted(missing))}; rerun ingest")
    ready = manifest[manifest["status"] == "ok"].reset_index(drop=True)
    if ready.empty:
        raise UserError(f"{manifest_path}: no patient was ingested with all three sequences; see report.json")
    return ready


def _shape(dim: str, array: np.ndarray) -> np.ndarray:
    return array.reshape(-1, *array.shape[2:]) if dim == "2d" else array


GEOMETRY_FILE = "geometry.json"
"""Beside the arrays: for each patient, where its voxels lie in the world (:class:`GridGeometry`), so that
a location the model points at can be compared with lesions given in patient coordinates."""


def _build_one(args: tuple[str, dict[str, Path], VolumeParams, str, Path]) -> tuple[str, GridGeometry]:
    patient, paths, params, dim, out_dir = args
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(f"patient {patient}: volume file(s) missing: {', '.join(missing)}; rerun ingest")
    tensor, geometry = patient_tensor_and_grid(paths, params)
    save_npy(out_dir / f"{patient}.npy", _shape(dim, tensor).astype(np.float16))
    return patient, geometry


def build_arrays(
    interim_dir: Path,
    out_dir: Path,
    params: VolumeParams,
    dim: str,
    workers: int = 1,
    progress: Callable[..., Iterable[Any]] = tqdm,
) -> pd.DataFrame:
    """Write one array per ready patient into a fresh ``out_dir`` plus ``index.csv`` (patient, label) and
    ``geometry.json`` (patient -> :class:`GridGeometry`).

    Returns the index. ``dim`` is ``2d`` or ``3d`` (see :data:`DIMS`).
    """
    if dim not in DIMS:
        raise ValueError(f"dim must be one of {DIMS}")
    manifest = read_manifest(interim_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # stale patients from an earlier cohort must not linger
    out_dir.mkdir(parents=True)
    jobs = [
        (
            row.patient,
            {s: interim_dir / getattr(row, f"{s}_file") for s in SEQUENCES},
            params,
            dim,
            out_dir,
        )
        for row in manifest.itertuples()
    ]
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else _Inline() as pool:
        done: list[tuple[str, GridGeometry]] = list(
            progress(pool.map(_build_one, jobs), total=len(jobs), desc=f"{dim} arrays", unit="patient")
        )
    index = pd.DataFrame(
        {"patient": [p for p, _ in done], "label": [CLASSES.index(label) for label in manifest["label"]]}
    )
    write_json(out_dir / GEOMETRY_FILE, {patient: geometry.to_json() for patient, geometry in done})
    write_csv(out_dir / "index.csv", index)
    log.info("wrote %d %s arrays of shape %s to %s", len(index), dim, array_shape(params, dim), out_dir)
    return index


def array_shape(params: VolumeParams, dim: str) -> tuple[int, ...]:
    depth_by_sequence = (len(SEQUENCES), params.depth)
    channels = (len(SEQUENCES) * params.depth,) if dim == "2d" else depth_by_sequence
    return (*channels, params.image_size, params.image_size)


class _Inline:
    """A stand-in for a process pool that maps in this process (workers == 1: easier to debug)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def map(function: Callable, items: list) -> map:
        return map(function, items)


def load_geometry(array_dir: Path) -> dict[str, GridGeometry]:
    """``geometry.json`` of an array directory: patient -> where its voxels lie (empty when absent, as in
    arrays built before it existed)."""
    path = array_dir / GEOMETRY_FILE
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
        return {str(patient): GridGeometry.from_json(entry) for patient, entry in entries.items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{path} is not a geometry file of this version: rerun slice-2d / stack-3d") from None


def load_index(array_dir: Path) -> pd.DataFrame:
    """Read ``index.csv`` of an array directory (patient, label)."""
    index_path = array_dir / "index.csv"
    if not index_path.is_file():
        raise UserError(f"{index_path} not found: run the slice-2d / stack-3d stage first (dvc repro)")
    return pd.read_csv(index_path, dtype={"patient": str, "label": int})
