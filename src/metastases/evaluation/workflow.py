"""What the evaluate stage does: score the held-out test patients with the trained models.

Only test patients' arrays are read here; the decision threshold comes from the cross-validation
out-of-fold predictions (``metrics/cv.json``), never from the test set.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from metastases.atomic import write_csv, write_json
from metastases.errors import UserError
from metastases.evaluation.metrics import auc, bootstrap_auc_ci, metrics_at, roc_table
from metastases.models import check_model
from metastases.params import CLASSES, EvaluateParams, TrainParams
from metastases.plotting import plot_confusion, plot_roc
from metastases.training.checkpoint import Ensemble, load_ensemble
from metastases.training.cohort import load_cohort, require_both_classes
from metastases.training.dataset import PatientArrays
from metastases.training.loop import make_loader, predict
from metastases.training.runtime import configure_torch, resolve_device

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class EvaluateOutputs:
    metrics: Path = Path("metrics/evaluate.json")
    predictions: Path = Path("metrics/predictions.csv")
    plots_dir: Path = Path("plots")
    """``roc/model_<dim>.csv`` (fpr, tpr, threshold), ``confusion/model_<dim>.csv`` (actual, predicted),
    ``roc.png``, ``confusion.png``."""


def read_cv_thresholds(path: Path, dims: list[str]) -> dict[str, float]:
    """The threshold cross-validation chose for each model (from out-of-fold predictions only)."""
    if not path.is_file():
        raise UserError(f"{path} not found: run cross-validate first (dvc repro cross-validate)")
    try:
        summary = json.loads(path.read_text())
        return {dim: float(summary[dim]["threshold"]) for dim in dims}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path} has no threshold for {', '.join(dims)}: rerun cross-validate") from None


def ensemble_scores(ensemble: Ensemble, loader: DataLoader, device: torch.device) -> np.ndarray:
    """Probability of metastases per sample: the mean of the ensemble members' probabilities."""
    member_scores = [predict(member.model.to(device), loader, device)[0] for member in ensemble.members]
    return np.mean(member_scores, axis=0)


def run_evaluation(
    array_dirs: dict[str, Path],
    model_paths: dict[str, Path],
    splits_path: Path,
    cv_metrics_path: Path,
    train_params: dict[str, TrainParams],
    params: EvaluateParams,
    seed: int,
    outputs: EvaluateOutputs,
) -> dict:
    """Evaluate each model (keys ``2d``/``3d``) on the test split; returns what goes to ``evaluate.json``."""
    thresholds = read_cv_thresholds(cv_metrics_path, list(array_dirs))
    results: dict[str, dict] = {}
    predictions: list[pd.DataFrame] = []
    curves: dict[str, tuple[pd.DataFrame, float, tuple[float, float]]] = {}
    confusions: dict[str, pd.DataFrame] = {}
    for dim, array_dir in array_dirs.items():
        model_params = train_params[dim]
        check_model(model_params.model, dim, model_params.section_name)
        cohort = load_cohort(array_dir, splits_path, dim)
        test = cohort.part("test")
        require_both_classes(test["label"], "the test split", "add patients or raise split.test_fraction")
        shape = cohort.sample_shape(test)
        ensemble = load_ensemble(model_paths[dim], model_params.model, dim, shape, f"train-{dim}")
        leaked = set(test["patient"]) & {p for f in ensemble.folds for p in f.train_patients + f.val_patients}
        if leaked:
            raise UserError(
                f"{model_paths[dim]} was trained on {len(leaked)} patient(s) that the split now holds out "
                f"for testing: the model and the split are from different runs; run dvc repro"
            )
        device = resolve_device(model_params.device)
        configure_torch(model_params.deterministic, model_params.threads, device)
        loader = make_loader(PatientArrays(array_dir, test), model_params.batch_size, False, seed, 0, device)
        scores = ensemble_scores(ensemble, loader, device)
        if not ensemble.learned:
            log.error(
                "evaluate %s: no fold model of %s learned; its scores are chance", dim, model_params.model
            )
        labels = test["label"].to_numpy()
        value = auc(labels, scores)
        low, high = bootstrap_auc_ci(labels, scores, params.bootstrap, params.ci, seed)
        threshold = thresholds[dim]
        results[dim] = {
            "auc": value,
            "auc_ci_low": low,
            "auc_ci_high": high,
            **metrics_at(labels, scores, DEFAULT_THRESHOLD),
            "threshold": threshold,
            "at_cv_threshold": metrics_at(labels, scores, threshold),
            "test_patients": len(test),
            "learned": ensemble.learned,
            "ensemble_models": len(ensemble.members),
        }
        predictions.append(test.assign(score=scores, model=dim))
        curves[f"{dim.upper()} {model_params.model}"] = (roc_table(labels, scores), value, (low, high))
        confusions[dim] = pd.DataFrame(
            {
                "patient": test["patient"],
                "actual": labels,
                "predicted": (scores >= DEFAULT_THRESHOLD).astype(int),
            }
        )
        log.info("evaluate %s: AUC %.3f [%.3f, %.3f] on %d test patients", dim, value, low, high, len(test))
    for (dim, table), (_, (roc, _, _)) in zip(confusions.items(), curves.items(), strict=True):
        write_csv(outputs.plots_dir / "roc" / f"model_{dim}.csv", roc)
        # class names, not 0/1, so DVC's confusion template labels its axes readably
        named = table.assign(**{c: [CLASSES[v] for v in table[c]] for c in ("actual", "predicted")})
        write_csv(outputs.plots_dir / "confusion" / f"model_{dim}.csv", named)
    plot_roc(curves, outputs.plots_dir / "roc.png")
    plot_confusion(
        {f"{d.upper()} {train_params[d].model} (threshold 0.5)": t for d, t in confusions.items()},
        outputs.plots_dir / "confusion.png",
    )
    write_csv(
        outputs.predictions, pd.concat(predictions, ignore_index=True)[["patient", "label", "score", "model"]]
    )
    write_json(outputs.metrics, results)
    return results
