"""What the cross-validate stage does: summarise the fold models' out-of-fold predictions.

The train stages trained one model per fold and scored the fold each left out (see
:mod:`metastases.training.crossval`); here those scores become the cross-validated AUC, the per-fold
spread, the decision threshold (chosen on out-of-fold predictions only, never on the test split) and the
out-of-fold ROC. Nothing is trained.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metastases.atomic import write_csv, write_json
from metastases.evaluation.metrics import auc, roc_table, youden_threshold
from metastases.models import check_model
from metastases.params import CrossValidateParams, TrainParams
from metastases.training.checkpoint import Ensemble, load_ensemble

log = logging.getLogger(__name__)


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


def run_cross_validation(
    model_paths: dict[str, Path],
    train_params: dict[str, TrainParams],
    params: CrossValidateParams,
    outputs: CrossValidateOutputs,
) -> dict:
    """Summarise the fold models' out-of-fold predictions (keys ``2d``/``3d``): nothing is trained here."""
    summary: dict[str, dict] = {}
    predictions: list[pd.DataFrame] = []
    for dim, path in model_paths.items():
        model_params = train_params[dim]
        check_model(model_params.model, dim, model_params.section_name)
        ensemble = load_ensemble(path, model_params.model, dim, None, f"train-{dim}")
        summary[dim] = summarise(ensemble, params.threshold)
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
    write_json(outputs.metrics, summary)
    return summary
