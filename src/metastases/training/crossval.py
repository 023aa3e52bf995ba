"""K-fold cross-validation over the training split: the folds come from ``data/splits.csv``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from metastases.params import TrainParams
from metastases.training.cohort import Cohort, require_both_classes
from metastases.training.loop import EpochRecord, Timing, fit

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    fold: int
    auc: float
    accuracy: float
    n_validation: int
    epochs: list[EpochRecord]


@dataclass
class CrossValidation:
    folds: list[FoldResult]
    out_of_fold: pd.DataFrame
    """One row per training patient: patient, label, score (from the model that did not train on it), fold."""
    timing: Timing


def check_folds(cohort: Cohort) -> None:
    """Every fold must leave both classes to train on and to validate with (else AUC is undefined)."""
    folds = cohort.folds
    if len(folds) < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    for fold in folds:
        fix = "add patients or lower split.folds, then dvc repro split"
        require_both_classes(cohort.part("train", folds=[fold])["label"], f"validation fold {fold}", fix)
        require_both_classes(
            cohort.part("train", exclude=[fold])["label"], f"training folds without {fold}", fix
        )


def cross_validate(
    cohort: Cohort, params: TrainParams, epochs: int, seed: int, device: torch.device
) -> CrossValidation:
    """Train one model per fold on the other folds, score the held-out fold; never reads test patients."""
    check_folds(cohort)
    shape = cohort.sample_shape(cohort.part("train"))
    results: list[FoldResult] = []
    out_of_fold: list[pd.DataFrame] = []
    timing = Timing()
    for fold in cohort.folds:
        train = cohort.part("train", exclude=[fold])
        validation = cohort.part("train", folds=[fold])
        fitted = fit(
            cohort.array_dir,
            train,
            validation,
            params,
            epochs,
            seed + 1000 * (fold + 1),  # distinct but reproducible initialisation per fold
            device,
            shape,
            description=f"cv {cohort.layout} fold {fold}",
        )
        timing.add(fitted.timing)
        assert fitted.val_scores is not None
        labels = validation["label"].to_numpy()
        scores = fitted.val_scores
        results.append(
            FoldResult(
                fold=fold,
                auc=float(roc_auc_score(labels, scores)),
                accuracy=float(np.mean((scores >= 0.5) == labels)),
                n_validation=len(validation),
                epochs=fitted.epochs,
            )
        )
        out_of_fold.append(validation.assign(score=scores, fold=fold))
    oof = pd.concat(out_of_fold, ignore_index=True)
    return CrossValidation(folds=results, out_of_fold=oof, timing=timing)
