"""K-fold training over the training split: the fold models are the final model (the nnU-Net practice).

Fold ``k``'s model trains on the other folds and scores fold ``k``, so every training patient gets one
out-of-fold score (cross-validation) and every training patient trains K-1 of the K models; the mean of
the K models scores new patients. Nothing is trained twice, and no test patient is ever read.

A fold model that does not separate its own training patients (scored in evaluation mode, without
augmentation: :func:`~metastases.training.loop.fit_check`) is retrained from another initialisation up to
``restarts`` times: the choice looks at the training patients only, never at the validation fold. One
still at chance after that is flagged (``learned: false``), left out of the ensemble and reported in the
stage log and the metrics.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from metastases.cli import configure_logging
from metastases.errors import UserError
from metastases.params import TrainingParams
from metastases.processes import die_with_parent
from metastases.training.distributed import current_group
from metastases.training.inputs import Cohort, require_both_classes
from metastases.training.loop import EpochRecord, Timing, fit
from metastases.training.runtime import configure_torch, fold_processes

log = logging.getLogger(__name__)

LEARNED_AUC = 0.8
"""A model has learned when it ranks its own training patients at least this well (ROC AUC) ..."""
LEARNED_FRACTION = 0.95
"""... and its loss on them is below this share of the chance loss, both in evaluation mode and without
augmentation. Measured on tiny synthetic cohorts (tests/test_training.py): an untrained slice network
ranks easy training patients up to AUC 0.94 at loss 0.70 (above chance), so the AUC alone is not
enough; a 3D model trained under heavy noise ranks them at 1.00 at loss 0.64 (92 % of chance) while its
augmented training loss stays at 0.73-0.86. Until 2026-12-05 the loss read was the last epoch's
training loss, measured under augmentation and dropout: it flagged 2D fold models that scored
0.84-1.00 on their validation folds as never having left chance, and retrained them."""


def chance_loss(labels: np.ndarray | pd.Series) -> float:
    """Cross-entropy of a model that predicts the class prior for everyone (ln 2 for balanced classes)."""
    share = float(np.mean(np.asarray(labels)))
    if share in (0.0, 1.0):
        return 0.0
    return -(share * math.log(share) + (1 - share) * math.log(1 - share))


def has_learned(fitted_loss: float, fitted_auc: float, labels: np.ndarray | pd.Series) -> bool:
    """True when a model separates its training patients (:func:`~metastases.training.loop.fit_check`):
    ``fitted_auc`` at least :data:`LEARNED_AUC` and ``fitted_loss`` below :data:`LEARNED_FRACTION` of
    :func:`chance_loss`."""
    return fitted_auc >= LEARNED_AUC and fitted_loss < LEARNED_FRACTION * chance_loss(labels)


@dataclass
class FoldResult:
    fold: int
    auc: float
    accuracy: float
    n_validation: int
    epochs: list[EpochRecord]
    model: nn.Module
    seed: int
    """The initialisation seed of the kept attempt."""
    attempts: int
    learned: bool
    fitted_loss: float
    """Loss on its training patients in evaluation mode, without augmentation."""
    fitted_auc: float
    """ROC AUC on its training patients, measured the same way (``learned`` reads both)."""
    precision: str
    train_patients: list[str]
    val_patients: list[str]

    @property
    def train_loss(self) -> float:
        return self.epochs[-1].train_loss


@dataclass
class FoldModels:
    folds: list[FoldResult]
    out_of_fold: pd.DataFrame
    """One row per training patient: patient, label, score (from the model that did not train on it), fold."""
    timing: Timing

    @property
    def learned_folds(self) -> list[int]:
        return [f.fold for f in self.folds if f.learned]


def check_folds(cohort: Cohort) -> None:
    """Every fold must leave both classes to train on and to validate with (else AUC is undefined)."""
    folds = cohort.folds
    fix = "add patients or lower split.folds, then dvc repro split"
    if len(folds) < 2:
        raise UserError(
            f"the training split has {len(folds)} fold(s); cross-validation needs 2 or more: {fix}"
        )
    for fold in folds:
        require_both_classes(cohort.part("train", folds=[fold])["label"], f"validation fold {fold}", fix)
        require_both_classes(
            cohort.part("train", exclude=[fold])["label"], f"training folds without {fold}", fix
        )


def fold_seed(seed: int, fold: int, attempt: int) -> int:
    """Distinct, reproducible initialisation per fold and attempt."""
    return seed + 1000 * (fold + 1) + 100 * attempt


@dataclass(frozen=True)
class FoldJob:
    """Everything one fold's training needs, picklable so that folds can train in parallel processes."""

    cohort: Cohort
    fold: int
    params: TrainingParams
    seed: int
    device: str
    shape: tuple[int, ...]


def train_fold(job: FoldJob) -> tuple[FoldResult, pd.DataFrame, Timing]:
    """Train fold ``job.fold``'s model (restarting while it stays at chance) and score its held-out fold."""
    cohort, fold, params = job.cohort, job.fold, job.params
    device = torch.device(job.device)
    train = cohort.part("train", exclude=[fold])
    validation = cohort.part("train", folds=[fold])
    timing = Timing()
    for attempt in range(params.restarts + 1):
        fold_init = fold_seed(job.seed, fold, attempt)
        fitted = fit(
            cohort.array_dir,
            train,
            validation,
            params,
            fold_init,
            device,
            job.shape,
            description=f"{cohort.dim} fold {fold}" + (f" attempt {attempt + 1}" if attempt else ""),
        )
        timing.add(fitted.timing)
        learned = has_learned(fitted.fitted_loss, fitted.fitted_auc, train["label"])
        if learned:
            break
        log.warning(
            "%s fold %d: does not separate its training patients (loss %.3f, AUC %.3f; chance %.3f) "
            "with seed %d%s", cohort.dim, fold, fitted.fitted_loss, fitted.fitted_auc,
            chance_loss(train["label"]), fold_init,
            "; retrying from another initialisation" if attempt < params.restarts else "",
        )  # fmt: skip
    assert fitted.val_scores is not None
    labels = validation["label"].to_numpy()
    scores = fitted.val_scores
    result = FoldResult(
        fold=fold,
        auc=float(roc_auc_score(labels, scores)),
        accuracy=float(np.mean((scores >= 0.5) == labels)),
        n_validation=len(validation),
        epochs=fitted.epochs,
        model=fitted.model.cpu(),
        seed=fold_init,
        attempts=attempt + 1,
        learned=learned,
        fitted_loss=fitted.fitted_loss,
        fitted_auc=fitted.fitted_auc,
        precision=fitted.precision,
        train_patients=list(train["patient"]),
        val_patients=list(validation["patient"]),
    )
    return result, validation.assign(score=scores, fold=fold), timing


def init_fold_worker(threads: int, deterministic: bool, device: str, *, parent: int | None = None) -> None:
    """Set up a fold process: the stage's logging, thread count and determinism switch.

    Its DataLoader workers are forked, as in a single-process run: a spawned process would otherwise
    spawn them too, re-importing torch for every epoch (seconds each). With ``parent``, the process ends
    when the process that started it ends, even by SIGKILL (:func:`metastases.processes.die_with_parent`).

    Args:
        threads: torch intra-op threads.
        deterministic: deterministic algorithms (``TrainingParams.deterministic``).
        device: where the fold trains.
        parent: process id of the process creating the pool; ``None``: the caller guards it itself.
    """
    if parent is not None:
        die_with_parent(parent)
    configure_logging()
    configure_torch(deterministic, threads, torch.device(device))
    if "fork" in multiprocessing.get_all_start_methods():
        multiprocessing.set_start_method("fork", force=True)


def train_folds(cohort: Cohort, params: TrainingParams, seed: int, device: torch.device) -> FoldModels:
    """Train one model per fold on the other folds and score the held-out fold.

    With ``params.parallel_folds`` > 1 that many folds train at once, one process each (each fold has its
    own seed, so the results are those of one fold after another).

    Args:
        cohort: arrays and split; only training patients are read.
        params: model, optimiser, augmentation, ``epochs``, ``restarts`` and ``parallel_folds``.
        seed: the shared seed; each fold and attempt derives its own from it.
        device: where to train.
    """
    check_folds(cohort)
    shape = cohort.sample_shape(cohort.part("train"))
    jobs = [FoldJob(cohort, fold, params, seed, str(device), shape) for fold in cohort.folds]
    processes = min(fold_processes(params.parallel_folds, device, params.threads), len(jobs))
    if current_group() is not None and processes > 1:
        log.info("%s.parallel_folds %s: 1 under DistributedDataParallel (every process trains each fold)",
                 params.section_name, params.parallel_folds)  # fmt: skip
        processes = 1
    if processes <= 1:
        done = [train_fold(job) for job in jobs]
    else:
        # spawn: a forked copy of a process that has already run torch can deadlock in its thread pools
        context = multiprocessing.get_context("spawn")
        init = (params.threads, params.deterministic, str(device))
        # a fold process ends with this one, even if this one is killed with SIGKILL
        initializer = partial(init_fold_worker, parent=os.getpid())
        pool = ProcessPoolExecutor(processes, mp_context=context, initializer=initializer, initargs=init)
        try:
            with pool:
                done = list(pool.map(train_fold, jobs))
        except BrokenProcessPool:
            raise UserError(
                f"a {cohort.dim} fold process died (out of memory?); nothing was written. "
                f"Lower {params.section_name}.parallel_folds or batch_size and rerun"
            ) from None
    timing = Timing()
    for _, _, fold_timing in done:
        timing.add(fold_timing)
    oof = pd.concat([scored for _, scored, _ in done], ignore_index=True)
    return FoldModels(folds=[result for result, _, _ in done], out_of_fold=oof, timing=timing)
