"""What the train-2d/train-3d and cross-validate stages do, from checked inputs to written outputs.

All results are computed before the first file is written, so a failure leaves no partial metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metastases.atomic import write_csv, write_json
from metastases.errors import ParamsError
from metastases.evaluation.metrics import auc, roc_table, youden_threshold
from metastases.params import CrossValidateParams, TrainParams
from metastases.plotting import plot_cv_loss, plot_training
from metastases.training.checkpoint import save_checkpoint
from metastases.training.cohort import load_cohort, require_both_classes
from metastases.training.crossval import CrossValidation, cross_validate
from metastases.training.loop import fit
from metastases.training.runtime import configure_torch, resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOutputs:
    """Where a training stage writes (defaults for 2D; the stage script fills in its own)."""

    model: Path = Path("models/2d.pt")
    metrics: Path = Path("metrics/train_2d.json")
    plots_dir: Path = Path("plots/train_2d")
    """``loss.csv`` (step, epoch, loss); ``val.csv`` (epoch, train_loss, val_loss, val_accuracy, val_auc)."""
    png: Path = Path("plots/loss_2d.png")
    timing: Path = Path("metrics/timing/train_2d.json")

    @classmethod
    def for_dim(cls, dim: str) -> TrainOutputs:
        return cls(
            model=Path(f"models/{dim}.pt"),
            metrics=Path(f"metrics/train_{dim}.json"),
            plots_dir=Path(f"plots/train_{dim}"),
            png=Path(f"plots/loss_{dim}.png"),
            timing=Path(f"metrics/timing/train_{dim}.json"),
        )


def run_training(
    array_dir: Path, splits_path: Path, params: TrainParams, seed: int, outputs: TrainOutputs
) -> dict:
    """Train ``params.model`` on the training folds except ``params.val_fold``, validate on that fold.

    Test patients are neither read nor used. Returns the flat final metrics written to ``outputs.metrics``.
    """
    started = time.perf_counter()
    cohort = load_cohort(array_dir, splits_path, params.dim)
    if params.val_fold not in cohort.folds:
        raise ParamsError(
            f"{params.section_name}.val_fold: {params.val_fold} is not a fold of {splits_path} "
            f"(folds {cohort.folds})"
        )
    train = cohort.part("train", exclude=[params.val_fold])
    validation = cohort.part("train", folds=[params.val_fold])
    fix = "add patients or lower split.folds, then dvc repro split"
    require_both_classes(train["label"], "the training folds", fix)
    require_both_classes(validation["label"], f"validation fold {params.val_fold}", fix)
    shape = cohort.sample_shape(pd.concat([train, validation]))
    device = resolve_device(params.device)
    configure_torch(params.deterministic, params.threads, device)
    result = fit(
        array_dir,
        train,
        validation,
        params,
        params.epochs,
        seed,
        device,
        shape,
        description=f"train {params.dim}",
    )
    last = result.epochs[-1]
    metrics = {
        "epochs": params.epochs,
        "train_patients": len(train),
        "val_patients": len(validation),
        "train_loss": last.train_loss,
        "val_loss": last.val_loss,
        "val_accuracy": last.val_accuracy,
        "val_auc": last.val_auc,
    }
    steps = pd.DataFrame(result.steps, columns=["step", "epoch", "loss"])
    epochs = pd.DataFrame([vars(record) for record in result.epochs])
    timing = {
        "seconds": round(time.perf_counter() - started, 2),
        "data_wait_share": round(result.timing.data_wait_share, 4),
        "device": device.type,
    }
    save_checkpoint(
        outputs.model, result.model, params.model, params.dim, shape, seed,
        list(train["patient"]), list(validation["patient"]),
    )  # fmt: skip
    write_csv(outputs.plots_dir / "loss.csv", steps)
    write_csv(outputs.plots_dir / "val.csv", epochs)
    plot_training(steps, epochs, f"{params.dim.upper()} {params.model}", outputs.png)
    write_json(outputs.timing, timing)
    write_json(outputs.metrics, metrics)
    log.info("train %s: %s; %s", params.dim, metrics, timing)
    return metrics


@dataclass(frozen=True)
class CrossValidateOutputs:
    metrics: Path = Path("metrics/cv.json")
    predictions: Path = Path("metrics/cv_predictions.csv")
    plots_dir: Path = Path("plots")
    """``cv_<dim>/loss.csv`` (per-epoch loss per fold and mean) and ``cv_roc/<dim>.csv`` (out-of-fold ROC)."""
    timing: Path = Path("metrics/timing/cross_validate.json")


def _loss_table(cv: CrossValidation) -> pd.DataFrame:
    """Wide per-epoch table: epoch, train_fold<k>, val_fold<k>, ..., train_mean, val_mean."""
    columns: dict[str, list[float]] = {"epoch": [r.epoch for r in cv.folds[0].epochs]}
    for fold in cv.folds:
        columns[f"train_fold{fold.fold}"] = [r.train_loss for r in fold.epochs]
        columns[f"val_fold{fold.fold}"] = [float(r.val_loss or 0.0) for r in fold.epochs]
    table = pd.DataFrame(columns)
    table["train_mean"] = table[[f"train_fold{f.fold}" for f in cv.folds]].mean(axis=1)
    table["val_mean"] = table[[f"val_fold{f.fold}" for f in cv.folds]].mean(axis=1)
    return table


def summarise(cv: CrossValidation, threshold_rule: str) -> dict:
    """``cv.json`` block of one model: mean/std of fold AUC and accuracy, folds, out-of-fold threshold."""
    oof = cv.out_of_fold
    aucs = np.array([f.auc for f in cv.folds])
    accuracies = np.array([f.accuracy for f in cv.folds])
    threshold = youden_threshold(oof["label"], oof["score"]) if threshold_rule == "youden" else 0.5
    return {
        "auc_mean": float(aucs.mean()),
        "auc_std": float(aucs.std(ddof=1)),
        "accuracy_mean": float(accuracies.mean()),
        "accuracy_std": float(accuracies.std(ddof=1)),
        "oof_auc": auc(oof["label"], oof["score"]),
        "threshold": threshold,
        "folds": [
            {"fold": f.fold, "auc": f.auc, "accuracy": f.accuracy, "patients": f.n_validation}
            for f in cv.folds
        ],
    }


def run_cross_validation(
    array_dirs: dict[str, Path],
    splits_path: Path,
    train_params: dict[str, TrainParams],
    params: CrossValidateParams,
    seed: int,
    outputs: CrossValidateOutputs,
) -> dict:
    """Cross-validate each model of ``array_dirs`` (keys ``2d``/``3d``) over the training split's folds."""
    started = time.perf_counter()
    summary: dict[str, dict] = {}
    predictions: list[pd.DataFrame] = []
    tables: dict[str, pd.DataFrame] = {}
    timing: dict[str, float | str] = {}
    for dim, array_dir in array_dirs.items():
        model_params = train_params[dim]
        cohort = load_cohort(array_dir, splits_path, dim)
        device = resolve_device(model_params.device)
        configure_torch(model_params.deterministic, model_params.threads, device)
        epochs = params.epochs_2d if dim == "2d" else params.epochs_3d
        cv = cross_validate(cohort, model_params, epochs, seed, device)
        summary[dim] = summarise(cv, params.threshold)
        predictions.append(cv.out_of_fold.assign(model=dim)[["patient", "label", "score", "model", "fold"]])
        tables[dim] = _loss_table(cv)
        timing[f"data_wait_share_{dim}"] = round(cv.timing.data_wait_share, 4)
        log.info("cross-validate %s (%s): AUC %.3f ± %.3f", dim, model_params.model,
                 summary[dim]["auc_mean"], summary[dim]["auc_std"])  # fmt: skip
    timing["seconds"] = round(time.perf_counter() - started, 2)
    oof = pd.concat(predictions, ignore_index=True)
    for dim, table in tables.items():
        write_csv(outputs.plots_dir / f"cv_{dim}" / "loss.csv", table)
        dim_oof = oof[oof["model"] == dim]
        write_csv(outputs.plots_dir / "cv_roc" / f"{dim}.csv", roc_table(dim_oof["label"], dim_oof["score"]))
        plot_cv_loss(
            table, f"{dim.upper()} {train_params[dim].model}", outputs.plots_dir / f"cv_loss_{dim}.png"
        )
    write_csv(outputs.predictions, oof)
    write_json(outputs.timing, timing)
    write_json(outputs.metrics, summary)
    return summary
