"""Params for tests, taken from the committed params.yaml (the one home of every default) and overridden."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from metastases.params import TrainingParams, VolumeParams, training_section, volume_section
from metastases.training.dataset import Augmentation

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"

NO_AUGMENTATION = {
    "flip_horizontal": 0.0, "flip_vertical": 0.0, "noise_std": 0.0, "intensity_shift": 0.0,
    "rotate_degrees": 0.0, "scale": 0.0,
}  # fmt: skip


def training_params(dim: str, **overrides: Any) -> TrainingParams:
    """``train_<dim>`` of the committed params.yaml with ``overrides``."""
    return dataclasses.replace(training_section(dim, PARAMS_YAML), **overrides)


def volume_params(name: str = "slice_2d", **overrides: Any) -> VolumeParams:
    """``slice_2d`` or ``stack_3d`` of the committed params.yaml with ``overrides``."""
    return dataclasses.replace(volume_section(name, PARAMS_YAML), **overrides)


def augmentation(**settings: float) -> Augmentation:
    """An augmentation doing only what ``settings`` switch on (every other amplitude 0)."""
    return Augmentation(training_params("2d", **{**NO_AUGMENTATION, **settings}))


def committed_params(**sections: dict[str, Any]) -> dict[str, Any]:
    """The committed params.yaml as a mapping, each named section updated with its overrides."""
    params = yaml.safe_load(PARAMS_YAML.read_text())
    for name, overrides in sections.items():
        params[name] = {**params[name], **overrides} if isinstance(params.get(name), dict) else overrides
    return params
