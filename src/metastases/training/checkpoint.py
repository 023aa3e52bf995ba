"""Model files: the K fold models (the final model is their ensemble), what rebuilds them, their out-of-fold
scores, and whether each learned."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from metastases.atomic import atomic_path
from metastases.errors import UserError
from metastases.models import build_model
from metastases.training.folds import FoldModels

FORMAT = 2
"""2: the K fold models of cross-validation, their out-of-fold scores, and which of them learned."""


@dataclass(frozen=True)
class FoldModel:
    """One fold model of an ensemble checkpoint, rebuilt and in eval mode."""

    fold: int
    model: nn.Module
    learned: bool
    train_patients: list[str]
    val_patients: list[str]


@dataclass(frozen=True)
class Ensemble:
    """What ``models/<dim>.pt`` holds: the fold models and their out-of-fold predictions."""

    model_name: str
    dim: str
    input_shape: tuple[int, ...]
    folds: list[FoldModel]
    out_of_fold: pd.DataFrame
    """patient, label, score, fold: each training patient scored by the fold model that left it out."""
    meta: dict[str, Any]

    @property
    def members(self) -> list[FoldModel]:
        """The fold models that score new patients: those that learned (all of them if none did)."""
        learned = [f for f in self.folds if f.learned]
        return learned or list(self.folds)

    @property
    def learned(self) -> bool:
        return any(f.learned for f in self.folds)

    def mean_score(self, fold_scores: Mapping[int, np.ndarray]) -> np.ndarray:
        """The ensemble's probability of metastases per sample: the mean over its :attr:`members` of
        ``fold_scores`` (each fold model's probabilities, keyed by fold). Evaluate, predict and the
        benchmark all score through here."""
        return np.mean([fold_scores[member.fold] for member in self.members], axis=0)


def save_ensemble(path: Path, cv: FoldModels, *, model_name: str, dim: str,
                  input_shape: tuple[int, ...], seed: int,
                  preprocessing: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Write every fold model of ``cv`` with its patients, learned flag and the out-of-fold scores.

    Args:
        path: the checkpoint file (written atomically).
        cv: the trained fold models.
        model_name: registry name; ``dim`` its arrays (2d or 3d); ``input_shape`` one sample's shape.
        seed: the training seed.
        preprocessing: the ``slice_2d``/``stack_3d`` params that built the arrays, so that a new study can
            be prepared the same way (``metastases.predict``) whatever params.yaml says later.
    """
    payload: dict[str, Any] = {
        "format": FORMAT,
        "model": model_name,
        "dim": dim,
        "input_shape": list(input_shape),
        "seed": seed,
        "preprocessing": preprocessing,
        "folds": [
            {
                "fold": f.fold,
                "seed": f.seed,
                "learned": f.learned,
                "train_loss": f.train_loss,
                "train_patients": list(f.train_patients),
                "val_patients": list(f.val_patients),
                "state_dict": {k: v.detach().cpu().clone() for k, v in f.model.state_dict().items()},
            }
            for f in cv.folds
        ],
        "out_of_fold": {
            "patient": [str(p) for p in cv.out_of_fold["patient"]],
            "label": [int(v) for v in cv.out_of_fold["label"]],
            "score": [float(v) for v in cv.out_of_fold["score"]],
            "fold": [int(v) for v in cv.out_of_fold["fold"]],
        },
    }
    # pickle shares repeated objects: a JSON round trip gives every string its own object, so folds trained
    # in this process or in others (parallel_folds) write the same bytes
    states = [fold.pop("state_dict") for fold in payload["folds"]]
    payload = json.loads(json.dumps(payload))
    for fold, state in zip(payload["folds"], states, strict=True):
        fold["state_dict"] = state
    # torch.save names the archive after the file it writes to; saving to memory first keeps the bytes
    # independent of the temporary name, so the same training gives a byte-identical file (DVC sees no change)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def open_ensemble(path: Path, fix: str) -> Ensemble:
    """Rebuild whatever model the checkpoint holds (its own model name and dim, not params'), e.g. for
    scoring a new study; ``fix`` ends every error line."""
    payload = _read_payload(path, fix)
    return _from_payload(path, payload, str(payload["model"]), str(payload["dim"]), None, fix)


def _read_payload(path: Path, fix: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} not found: {fix}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises many types
        raise UserError(f"{path}: not a readable model checkpoint ({type(exc).__name__}); {fix}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a checkpoint written by this version (format {FORMAT}); {fix}")
    return payload


def load_ensemble(
    path: Path, model_name: str, dim: str, input_shape: tuple[int, ...] | None, stage: str
) -> Ensemble:
    """Rebuild the saved fold models; they must be ``model_name`` for samples of ``input_shape``.

    ``input_shape`` None skips the shape check (readers of the out-of-fold scores only). Any mismatch
    with the current params or data is a one-line :class:`UserError` that names the stage to rerun.
    """
    fix = f"rerun {stage} (dvc repro {stage})"
    return _from_payload(path, _read_payload(path, fix), model_name, dim, input_shape, fix)


def _from_payload(
    path: Path,
    payload: dict[str, Any],
    model_name: str,
    dim: str,
    input_shape: tuple[int, ...] | None,
    fix: str,
) -> Ensemble:
    if payload["model"] != model_name or payload["dim"] != dim:
        raise UserError(
            f"{path} holds a {payload['dim']} {payload['model']!r} model but params ask for "
            f"{dim} {model_name!r}; {fix}"
        )
    saved_shape = tuple(int(v) for v in payload["input_shape"])
    if input_shape is not None and saved_shape != tuple(input_shape):
        raise UserError(
            f"{path} was trained on arrays of shape {saved_shape} but the data now have "
            f"{tuple(input_shape)}; {fix}"
        )
    if not payload["folds"]:
        raise UserError(f"{path} holds no fold model; {fix}")
    folds: list[FoldModel] = []
    for entry in payload["folds"]:
        try:
            model = build_model(model_name, saved_shape)
        except UserError as exc:  # a model name this version does not know
            raise UserError(f"{path}: {exc}; {fix}") from None
        try:
            model.load_state_dict(entry["state_dict"])
        except RuntimeError:
            raise UserError(
                f"{path}: the weights of fold {entry['fold']} do not fit {model_name!r}; {fix}"
            ) from None
        model.eval()
        folds.append(
            FoldModel(int(entry["fold"]), model, bool(entry["learned"]), list(entry["train_patients"]),
                      list(entry["val_patients"]))
        )  # fmt: skip
    oof = pd.DataFrame(payload["out_of_fold"]).astype({"patient": str})
    meta = {k: v for k, v in payload.items() if k not in ("folds", "out_of_fold")}
    return Ensemble(model_name, dim, saved_shape, folds, oof, meta)
