"""Model files: the state dict plus what is needed to rebuild the network and to check it still fits."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metastases.atomic import atomic_path
from metastases.errors import UserError
from metastases.models import build_model

FORMAT = 1


def save_checkpoint(
    path: Path,
    model: nn.Module,
    model_name: str,
    dim: str,
    input_shape: tuple[int, ...],
    seed: int,
    train_patients: list[str],
    val_patients: list[str],
) -> None:
    """Write ``{format, model, dim, input_shape, seed, train/val patients, state_dict}`` atomically."""
    payload: dict[str, Any] = {
        "format": FORMAT,
        "model": model_name,
        "dim": dim,
        "input_shape": list(input_shape),
        "seed": seed,
        "train_patients": list(train_patients),
        "val_patients": list(val_patients),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    # torch.save names the archive after the file it writes to; saving to memory first keeps the bytes
    # independent of the temporary name, so the same training gives a byte-identical file (DVC sees no change)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_checkpoint(
    path: Path, model_name: str, dim: str, input_shape: tuple[int, ...], stage: str
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the saved network; it must be ``model_name`` for samples of ``input_shape``.

    Any mismatch with the current params or data is a one-line :class:`UserError` that names the stage
    to rerun. Returns the model (CPU, eval mode) and the checkpoint's metadata.
    """
    fix = f"rerun {stage} (dvc repro {stage})"
    if not path.is_file():
        raise UserError(f"{path} not found: {fix}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises many types
        raise UserError(f"{path}: not a readable model checkpoint ({type(exc).__name__}); {fix}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a checkpoint written by this project (format {FORMAT}); {fix}")
    if payload["model"] != model_name or payload["dim"] != dim:
        raise UserError(
            f"{path} holds a {payload['dim']} {payload['model']!r} model but params ask for "
            f"{dim} {model_name!r}; {fix}"
        )
    if tuple(payload["input_shape"]) != tuple(input_shape):
        raise UserError(
            f"{path} was trained on arrays of shape {tuple(payload['input_shape'])} but the data now have "
            f"{tuple(input_shape)}; {fix}"
        )
    model = build_model(model_name, tuple(input_shape))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError:
        raise UserError(f"{path}: its weights do not fit model {model_name!r}; {fix}") from None
    model.eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta
