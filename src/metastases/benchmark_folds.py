"""The benchmark's unit of work: one fold model, trained in a process of its own and saved as it finishes.

A benchmark run (one row, one training seed) is K fold models, each trained by
:func:`~metastases.training.folds.train_fold` exactly as cross-validation trains it (the same job, the
same seeds, the same restarts), so the numbers are the pipeline's. Training folds rather than whole runs
as the tasks of ``--jobs`` does two things on a small machine: ``--jobs 2`` keeps two fold processes busy
whatever the rows, and every finished fold model is written to ``<json stem>-folds/<job key>-fold<k>.pt``
at once, so an interrupted benchmark loses at most the fold models that were training (minutes to an
hour each on 2 cores, where a slow baseline's whole run takes hours). ``--resume`` reads them back; a run
whose K fold models are all there is scored without training anything, and its fold files are removed
once the run is saved in the benchmark JSON.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import multiprocessing
import os
import resource
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from metastases.atomic import atomic_path
from metastases.models import build_model
from metastases.params import TrainingParams
from metastases.processes import guard_worker
from metastases.training.folds import FoldJob, FoldResult, check_folds, init_fold_worker, train_fold
from metastases.training.inputs import Cohort
from metastases.training.loop import EpochRecord, Timing
from metastases.training.runtime import resolve_device

log = logging.getLogger(__name__)

FORMAT = 2
"""Version of the saved fold files; another version is trained again rather than read."""


RESULT_FIELDS = (
    "fold",
    "auc",
    "accuracy",
    "n_validation",
    "seed",
    "attempts",
    "learned",
    "fitted_loss",
    "fitted_auc",
    "precision",
    "train_patients",
    "val_patients",
)
"""What a fold file keeps of a :class:`FoldResult` besides its weights and epochs."""
SCORED_COLUMNS = ("patient", "label", "score", "fold")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class FoldTask:
    """One fold model of one benchmark run, and where it is saved when trained."""

    run: int
    """Index of the run (row, training seed) in the benchmark's job list."""
    job: FoldJob
    path: Path


@dataclass
class TrainedFold:
    """A trained fold model with its out-of-fold scores and what it cost."""

    result: FoldResult
    scored: pd.DataFrame
    """The validation fold's patients: patient, label, score, fold."""
    timing: Timing
    cpu_seconds: float
    wall_seconds: float


def fold_tasks(cohort: Cohort, params: TrainingParams, *, seed: int, run: int, files: Path) -> list[FoldTask]:
    """The K fold tasks of one run, after the same checks as cross-validation (both classes in every fold).

    Args:
        cohort: arrays and split of the run's dim.
        params: the row's training params (epochs included).
        seed: the training seed; each fold and attempt derives its own from it, as in cross-validation.
        run: index of the run, handed back with each finished fold.
        files: fold ``k``'s model is saved as ``files`` + ``-fold<k>.pt``.
    """
    check_folds(cohort)
    shape = cohort.sample_shape(cohort.part("train"))
    device = str(resolve_device(params.device))
    return [
        FoldTask(
            run,
            FoldJob(cohort, fold, params, seed, device, shape),
            files.with_name(f"{files.name}-fold{fold}.pt"),
        )
        for fold in cohort.folds
    ]


def train_fold_task(task: FoldTask) -> TrainedFold:
    """Train one fold model (in this process), save it to ``task.path`` and return it."""
    # what a cross-validation fold process sets up: logging, threads, determinism, forked loader workers
    init_fold_worker(task.job.params.threads, task.job.params.deterministic, task.job.device)
    started, cpu = time.perf_counter(), cpu_seconds()
    result, scored, timing = train_fold(task.job)
    trained = TrainedFold(result, scored, timing, cpu_seconds() - cpu, time.perf_counter() - started)
    save_fold(task.path, trained)
    return trained


def save_fold(path: Path, trained: TrainedFold) -> None:
    """Write a trained fold model atomically: its weights, scores, training record and costs."""
    result = trained.result
    payload: dict[str, Any] = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()},
        "result": {name: getattr(result, name) for name in RESULT_FIELDS},
        "epochs": [list(dataclasses.astuple(record)) for record in result.epochs],
        "scored": {column: trained.scored[column].tolist() for column in SCORED_COLUMNS},
        "timing": [trained.timing.data_wait_s, trained.timing.compute_s],
        "cpu_seconds": trained.cpu_seconds,
        "wall_seconds": trained.wall_seconds,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_fold(task: FoldTask) -> TrainedFold | None:
    """The fold model saved at ``task.path``, rebuilt for ``task.job``; None when there is none or it
    cannot be read (it is then trained again, with one log line saying why)."""
    if not task.path.is_file():
        return None
    try:
        payload = torch.load(task.path, map_location="cpu", weights_only=True)
        if payload.get("format") != FORMAT:
            raise ValueError(f"format {payload.get('format')}, not {FORMAT}")
        model = build_model(task.job.params.model, task.job.shape)
        model.load_state_dict(payload["state_dict"])
        result = FoldResult(
            **payload["result"], epochs=[EpochRecord(*record) for record in payload["epochs"]], model=model
        )
        scored = pd.DataFrame(payload["scored"]).astype({"patient": str})
        timing = Timing(*payload["timing"])
        return TrainedFold(result, scored, timing, payload["cpu_seconds"], payload["wall_seconds"])
    except Exception as exc:  # a truncated or foreign file: torch and the rebuild raise many types
        log.warning("%s: not a readable fold model (%s: %s); training it again", task.path,
                    type(exc).__name__, exc)  # fmt: skip
        return None


def run_folds(tasks: list[FoldTask], workers: int, on_done: Callable[[FoldTask, TrainedFold], None]) -> None:
    """Train ``tasks`` in order, ``workers`` at a time (1: in this process), calling ``on_done`` in the
    calling process as each one finishes (in finishing order)."""
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            on_done(task, train_fold_task(task))
        return
    # spawn: a forked copy of a process that has already run torch can deadlock in its thread pools
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)), mp_context=context, initializer=guard_worker,
        initargs=(os.getpid(),),
    ) as pool:  # fmt: skip
        futures = {pool.submit(train_fold_task, task): task for task in tasks}
        for future in as_completed(futures):
            on_done(futures[future], future.result())
