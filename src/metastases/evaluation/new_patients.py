"""Patients the pipeline did not build arrays for (a new study, a second site): their volumes prepared the
way each checkpoint's arrays were, from the preprocessing recorded in the checkpoint, never from today's
params."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metastases.errors import UserError
from metastases.params import VolumeParams
from metastases.training.checkpoint import Ensemble
from metastases.volumes import GridGeometry, patient_tensor_and_grid


def checkpoint_preprocessing(ensemble: Ensemble, path: Path, fix: str) -> VolumeParams:
    """The ``slice_2d``/``stack_3d`` params that built the checkpoint's training arrays."""
    prep = ensemble.meta.get("preprocessing")
    if not isinstance(prep, dict):
        raise UserError(f"{path} does not record how its arrays were built; {fix}")
    try:
        return VolumeParams(**{**prep, "clip_percentiles": tuple(prep["clip_percentiles"])})
    except (TypeError, KeyError, UserError) as exc:
        raise UserError(f"{path}: its preprocessing record is not usable ({exc}); {fix}") from None


def prepare_array(
    ensemble: Ensemble, volumes: dict[str, Path], params: VolumeParams, *, path: Path, fix: str
) -> tuple[np.ndarray, GridGeometry]:
    """One patient's array for ``ensemble`` (``[60, S, S]`` or ``[3, D, S, S]``) and where its voxels lie.

    Args:
        ensemble: the checkpoint's fold ensemble.
        volumes: the patient's NIfTI volume per sequence.
        params: :func:`checkpoint_preprocessing` of the checkpoint.
        path: the checkpoint (named in errors); ``fix`` ends every error line.
    """
    tensor, geometry = patient_tensor_and_grid(volumes, params)
    array = tensor.reshape(-1, *tensor.shape[2:]) if ensemble.dim == "2d" else tensor
    # the pipeline stores arrays as float16: the same rounding gives the same score
    array = array.astype(np.float16).astype(np.float32)
    if tuple(array.shape) != tuple(ensemble.input_shape):
        raise UserError(
            f"{path}: the model takes {tuple(ensemble.input_shape)} but its own preprocessing gives "
            f"{tuple(array.shape)}; {fix}"
        )
    return array, geometry
