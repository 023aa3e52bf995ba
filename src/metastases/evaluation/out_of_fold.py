"""What the cross-validate stage does: summarise the fold models' out-of-fold predictions.

The train stages trained one model per fold and scored the fold each left out (see
:mod:`metastases.training.folds`); here those scores become the cross-validated AUC, the per-fold
spread, the decision threshold (chosen on out-of-fold predictions only, never on the test split) and the
out-of-fold ROC. Nothing is trained.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from metastases.arrays import load_geometry
from metastases.atomic import write_csv
from metastases.evaluation.calibration import brier
from metastases.evaluation.evidence import Evidence, array_depth, can_explain, explain_patients, pointing_game
from metastases.evaluation.metrics import auc, roc_table, youden_threshold
from metastases.lesion_truth import read_lesions
from metastases.metrics_file import write_metrics
from metastases.models import check_model
from metastases.params import CrossValidateParams, TrainingParams
from metastases.training.checkpoint import Ensemble, load_ensemble

log = logging.getLogger(__name__)

HEADLINE = ("2d.oof_auc", "2d.localisation", "3d.oof_auc", "3d.localisation")
"""What ``metrics/cv.json`` shows (``dvc metrics show``); the threshold and the rest: ``metrics/details/``."""


@dataclass(frozen=True)
class CrossValidateOutputs:
    metrics: Path = Path("metrics/cv.json")
    predictions: Path = Path("metrics/cv_predictions.csv")
    plots_dir: Path = Path("plots")
    """``cv_roc/model_<dim>.csv`` (out-of-fold ROC; the file name is the legend of DVC's plot)."""


def summarise(ensemble: Ensemble, threshold_rule: str) -> dict:
    """``cv.json`` block of one model: out-of-fold AUC, per-fold AUC mean/std, threshold, learned flags."""
    oof = ensemble.out_of_fold
    per_fold = []
    for fold in ensemble.folds:
        rows = oof[oof["fold"] == fold.fold]
        scores, labels = rows["score"].to_numpy(), rows["label"].to_numpy()
        per_fold.append(
            {
                "fold": fold.fold,
                "auc": auc(labels, scores),
                "accuracy": float(np.mean((scores >= 0.5) == labels)),
                "patients": len(rows),
                "learned": fold.learned,
            }
        )
    aucs = np.array([f["auc"] for f in per_fold])
    accuracies = np.array([f["accuracy"] for f in per_fold])
    threshold = youden_threshold(oof["label"], oof["score"]) if threshold_rule == "youden" else 0.5
    flat_folds = {f"fold{f['fold']}_auc": f["auc"] for f in per_fold}
    return {
        "oof_auc": auc(oof["label"], oof["score"]),
        "brier": brier(oof["label"].to_numpy(), oof["score"].to_numpy()),
        "auc_mean": float(aucs.mean()),
        "auc_std": float(aucs.std(ddof=1)) if len(aucs) > 1 else 0.0,
        "auc_min": float(aucs.min()),
        "accuracy_mean": float(accuracies.mean()),
        "accuracy_std": float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0,
        "threshold": threshold,
        "learned": ensemble.learned,
        "folds_not_learned": sum(not f.learned for f in ensemble.folds),
        **flat_folds,
        "folds": per_fold,
    }


def out_of_fold_evidence(ensemble: Ensemble, array_dir: Path, batch_size: int) -> dict[str, Evidence] | None:
    """Each training patient's evidence from the one fold model that did not train on it (None for models
    without evidence maps). Runs on the CPU: a forward pass over the training split."""
    if not can_explain([f.model for f in ensemble.folds]):
        return None
    device = torch.device("cpu")
    depth = array_depth(ensemble)
    evidence: dict[str, Evidence] = {}
    for fold in ensemble.folds:
        rows = ensemble.out_of_fold[ensemble.out_of_fold["fold"] == fold.fold]
        evidence |= explain_patients(
            [fold.model], array_dir, rows, depth=depth, device=device, batch_size=batch_size
        )
    return evidence


def run_cross_validation(
    model_paths: dict[str, Path],
    train_params: dict[str, TrainingParams],
    params: CrossValidateParams,
    outputs: CrossValidateOutputs,
    *,
    array_dirs: dict[str, Path] | None = None,
    raw_dir: Path | None = None,
) -> dict:
    """Summarise the fold models' out-of-fold predictions (keys ``2d``/``3d``): nothing is trained here.

    With ``array_dirs`` and a ``raw_dir`` holding ``lesions.csv``, also the out-of-fold localisation: how
    often each fold model's strongest evidence on the patients it did not train on lies in a metastasis.
    """
    lesions = read_lesions(raw_dir) if raw_dir is not None and array_dirs else None
    summary: dict[str, dict] = {}
    predictions: list[pd.DataFrame] = []
    for dim, path in model_paths.items():
        model_params = train_params[dim]
        check_model(model_params.model, dim, model_params.section_name)
        ensemble = load_ensemble(path, model_params.model, dim, None, f"train-{dim}")
        summary[dim] = summarise(ensemble, params.threshold)
        if lesions is not None and array_dirs and dim in array_dirs:
            evidence = out_of_fold_evidence(ensemble, array_dirs[dim], model_params.batch_size)
            if evidence is None:
                log.info("cross-validate %s: %s has no evidence maps; localisation not scored", dim,
                         model_params.model)  # fmt: skip
            else:
                oof = ensemble.out_of_fold
                labels = dict(zip(oof["patient"].astype(str), oof["label"].astype(int), strict=True))
                game = pointing_game(evidence, labels, load_geometry(array_dirs[dim]), lesions)
                summary[dim]["localisation"] = game.localisation
                summary[dim]["localisation_patients"] = game.patients
        predictions.append(
            ensemble.out_of_fold.assign(model=dim)[["patient", "label", "score", "model", "fold"]]
        )
        log.info(
            "cross-validate %s (%s): out-of-fold AUC %.3f, fold AUC %.3f ± %.3f",
            *(
                dim,
                model_params.model,
                summary[dim]["oof_auc"],
                summary[dim]["auc_mean"],
                summary[dim]["auc_std"],
            ),
        )
    oof = pd.concat(predictions, ignore_index=True)
    for dim in model_paths:
        dim_oof = oof[oof["model"] == dim]
        write_csv(
            outputs.plots_dir / "cv_roc" / f"model_{dim}.csv", roc_table(dim_oof["label"], dim_oof["score"])
        )
    write_csv(outputs.predictions, oof)
    write_metrics(outputs.metrics, summary, HEADLINE)
    return summary
