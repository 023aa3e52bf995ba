"""What the train-2d/train-3d stages do, from checked inputs to written outputs.

All results are computed before the first file is written, so a failure leaves no partial metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from metastases.atomic import write_csv, write_json
from metastases.metrics_file import write_metrics
from metastases.models import check_model
from metastases.params import TrainingParams, VolumeParams
from metastases.plotting import plot_cv_loss
from metastases.processes import under_torchrun
from metastases.training.checkpoint import save_ensemble
from metastases.training.distributed import (
    Group,
    check_nproc,
    launch,
    start_group,
    stop_group,
    worker_device,
)
from metastases.training.folds import FoldModels, check_folds, train_folds
from metastases.training.inputs import Cohort, load_cohort
from metastases.training.runtime import configure_torch, resolve_device, resolve_precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOutputs:
    """Where a training stage writes (defaults for 2D; the stage script fills in its own)."""

    model: Path = Path("models/2d.pt")
    metrics: Path = Path("metrics/train_2d.json")
    curves: Path = Path("plots/train/model_2d.csv")
    """Per epoch: each fold's training and validation loss, their means and the mean validation AUC."""
    png: Path = Path("plots/loss_2d.png")
    timing: Path = Path("logs/timing/train_2d.json")
    """Wall seconds and data-wait share: not a DVC output and not in Git (it changes with every run)."""

    @classmethod
    def for_dim(cls, dim: str) -> TrainOutputs:
        return cls(
            model=Path(f"models/{dim}.pt"),
            metrics=Path(f"metrics/train_{dim}.json"),
            curves=Path(f"plots/train/model_{dim}.csv"),
            png=Path(f"plots/loss_{dim}.png"),
            timing=Path(f"logs/timing/train_{dim}.json"),
        )


def loss_table(cv: FoldModels) -> pd.DataFrame:
    """Wide per-epoch table: epoch, train_fold<k>, val_fold<k>, ..., train_loss, validation_loss,
    validation_auc (the last three: means over the folds, the curves DVC draws)."""
    columns: dict[str, list[float]] = {"epoch": [r.epoch for r in cv.folds[0].epochs]}
    for fold in cv.folds:
        columns[f"train_fold{fold.fold}"] = [r.train_loss for r in fold.epochs]
        columns[f"val_fold{fold.fold}"] = [float(r.val_loss or 0.0) for r in fold.epochs]
    table = pd.DataFrame(columns)
    table["train_loss"] = table[[f"train_fold{f.fold}" for f in cv.folds]].mean(axis=1)
    table["validation_loss"] = table[[f"val_fold{f.fold}" for f in cv.folds]].mean(axis=1)
    table["validation_auc"] = np.mean([[float(r.val_auc or 0.0) for r in f.epochs] for f in cv.folds], axis=0)
    return table


def run_training(
    array_dir: Path,
    splits_path: Path,
    params: TrainingParams,
    seed: int,
    outputs: TrainOutputs,
    preprocessing: VolumeParams | None = None,
) -> dict:
    """Train the K fold models of ``params.model`` (each on K-1 folds, scored on the fold left out).

    The checkpoint holds all K: their mean scores new patients, their out-of-fold scores are the
    cross-validation. Test patients are neither read nor used. Returns the metrics written to
    ``outputs.metrics``; a fold model that does not separate its training patients is flagged there and
    in the log.
    """
    started = time.perf_counter()
    cohort, shape = check_training_inputs(array_dir, splits_path, params)
    device = resolve_device(params.device)
    precision = resolve_precision(params.precision, device, f"{params.section_name}.precision")
    log.info("%s: device %s, precision %s (%s)", params.section_name, device, precision, params.precision)
    group = None
    if under_torchrun():
        device = worker_device(device)
        group = start_group(device)
    try:
        configure_torch(params.deterministic, params.threads, device)
        cv = train_folds(cohort, params, seed, device)
        if group is not None:
            group.barrier()  # every rank has trained every fold before rank 0 writes
        metrics = _write_outputs(cv, params, seed, shape, outputs, preprocessing, started, device, group)
    finally:
        if group is not None:
            stop_group()
    return metrics


def check_training_inputs(
    array_dir: Path, splits_path: Path, params: TrainingParams
) -> tuple[Cohort, tuple[int, ...]]:
    """The model name, the split and the arrays, checked before anything trains (or any worker starts):
    returns the cohort and one sample's shape."""
    check_model(params.model, params.dim, params.section_name)
    cohort = load_cohort(array_dir, splits_path, params.dim)
    shape = cohort.sample_shape(cohort.part("train"))
    check_folds(cohort)
    return cohort, shape


def launch_distributed(script: Path, argv: Sequence[str], array_dir: Path, splits_path: Path,
                       params: TrainingParams) -> None:  # fmt: skip
    """Check the inputs, the device and ``params.nproc`` here, then run ``script argv`` as ``nproc``
    torchrun workers (each of which calls :func:`run_training`); a bad value fails before any starts.

    Args:
        script: the stage script the workers run.
        argv: its arguments.
        array_dir: the processed arrays.
        splits_path: the split table.
        params: the training section (``nproc`` > 1).
    """
    check_training_inputs(array_dir, splits_path, params)
    device = resolve_device(params.device)
    resolve_precision(params.precision, device, f"{params.section_name}.precision")
    check_nproc(params.nproc, device, params.section_name)
    launch(script, argv, params.nproc)


def _write_outputs(
    cv: FoldModels,
    params: TrainingParams,
    seed: int,
    shape: tuple[int, ...],
    outputs: TrainOutputs,
    preprocessing: VolumeParams | None,
    started: float,
    device: torch.device,
    group: Group | None,
) -> dict:
    """The metrics of ``cv``; written with the checkpoint, curves and picture by rank 0 (or the only
    process) alone."""
    learned = cv.learned_folds
    metrics: dict[str, object] = {
        "model": params.model,
        "epochs": params.epochs,
        "folds": len(cv.folds),
        "train_patients": len(cv.out_of_fold),
        "learned": bool(learned),
        "folds_learned": len(learned),
        "folds_not_learned": len(cv.folds) - len(learned),
        "restarts_used": sum(f.attempts - 1 for f in cv.folds),
        "train_loss_mean": float(np.mean([f.train_loss for f in cv.folds])),
        "fitted_auc_mean": float(np.mean([f.fitted_auc for f in cv.folds])),
        "precision": cv.folds[0].precision,
        "oof_auc": float(roc_auc_score(cv.out_of_fold["label"], cv.out_of_fold["score"])),
    }
    for fold in cv.folds:
        metrics[f"fold{fold.fold}"] = {
            "train_loss": fold.train_loss,
            "fitted_loss": fold.fitted_loss,
            "fitted_auc": fold.fitted_auc,
            "val_loss": fold.epochs[-1].val_loss,
            "val_auc": fold.auc,
            "learned": fold.learned,
            "attempts": fold.attempts,
        }
    timing = {
        "seconds": round(time.perf_counter() - started, 2),
        "data_wait_share": round(cv.timing.data_wait_share, 4),
        "device": device.type,
        "processes": 1 if group is None else group.world,
    }
    if group is not None and not group.is_main:
        return metrics
    table = loss_table(cv)
    save_ensemble(
        outputs.model, cv, model_name=params.model, dim=params.dim, input_shape=shape, seed=seed,
        preprocessing=dataclasses.asdict(preprocessing) if preprocessing is not None else None,
    )  # fmt: skip
    write_csv(outputs.curves, table)
    plot_cv_loss(table, f"{params.dim.upper()} {params.model}, {len(cv.folds)} fold models", outputs.png)
    write_json(outputs.timing, timing)
    write_metrics(outputs.metrics, metrics, ("folds_learned",))
    if not learned:
        log.error(
            "train %s: NO fold model of %s separates its training patients (mean AUC %.3f without "
            "augmentation): the saved model is not a "
            "classifier; see %s and try more epochs or another lr",
            params.dim, params.model, metrics["fitted_auc_mean"], outputs.png,
        )  # fmt: skip
    elif len(learned) < len(cv.folds):
        log.warning(
            "train %s: %d of %d fold models do not separate their training patients and are left out of "
            "the ensemble",
            params.dim, metrics["folds_not_learned"], len(cv.folds),
        )  # fmt: skip
    log.info("train %s: out-of-fold AUC %.3f, %d/%d folds learned, %.0f s", params.dim, metrics["oof_auc"],
             len(learned), len(cv.folds), timing["seconds"])  # fmt: skip
    return metrics
