"""Training and evaluation loops in the manner of torchvision's references/classification/train.py.

``train_one_epoch`` and ``predict`` are the two building blocks; ``fit`` wires them for one model,
one training set and an optional validation set, and records what the plots and metrics need.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from metastases.models import build_model
from metastases.params import TrainingParams
from metastases.training.dataset import Augmentation, PatientArrays
from metastases.training.distributed import (
    IGNORE_LABEL,
    Group,
    MarkedSamples,
    RankBatches,
    current_group,
    sync_buffers,
    wrap_model,
)
from metastases.training.runtime import (
    amp_enabled,
    autocast,
    fold_processes,
    loader_workers,
    prepare_model,
    resolve_precision,
    seed_everything,
    to_device,
)

log = logging.getLogger(__name__)


@dataclass
class Timing:
    """Seconds spent waiting for the next batch vs. in forward/backward/step, summed over a run."""

    data_wait_s: float = 0.0
    compute_s: float = 0.0

    @property
    def data_wait_share(self) -> float:
        total = self.data_wait_s + self.compute_s
        return self.data_wait_s / total if total else 0.0

    def add(self, other: Timing) -> None:
        self.data_wait_s += other.data_wait_s
        self.compute_s += other.compute_s


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    val_auc: float | None


@dataclass
class FitResult:
    model: nn.Module
    input_shape: tuple[int, ...]
    steps: list[tuple[int, int, float]] = field(default_factory=list)
    """Per iteration: (global step, epoch, train loss of that batch)."""
    epochs: list[EpochRecord] = field(default_factory=list)
    val_scores: np.ndarray | None = None
    """Probability of metastases for each validation patient after the last epoch."""
    timing: Timing = field(default_factory=Timing)
    precision: str = "float32"
    """The forward pass's precision (:func:`~metastases.training.runtime.resolve_precision`)."""
    fitted_loss: float = float("nan")
    """Mean loss on the training patients after the last epoch, in evaluation mode and without
    augmentation: how well the model separates what it trained on (:func:`fit_check`)."""
    fitted_auc: float = float("nan")
    """ROC AUC on the training patients, measured the same way."""


def _worker_init(worker_id: int) -> None:
    # each worker's NumPy/Python state derives from the loader's seeded generator
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: PatientArrays, batch_size: int, shuffle: bool, seed: int, workers: int, device: torch.device
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_worker_init,
        pin_memory=device.type == "cuda",
        persistent_workers=False,  # workers must see set_epoch(): fresh copies each epoch
    )


def _rank_loader(
    dataset: PatientArrays, batch_size: int, seed: int, workers: int, device: torch.device, group: Group
) -> DataLoader:
    """This rank's share of each batch of :func:`make_loader`'s shuffled, seeded order."""
    sampler = RankBatches(len(dataset), batch_size, seed=seed, rank=group.rank, world=group.world)
    return DataLoader(
        MarkedSamples(dataset),
        batch_sampler=sampler,
        num_workers=workers,
        worker_init_fn=_worker_init,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def _predict_gathered(
    model: nn.Module, shard: DataLoader, device: torch.device, criterion: nn.Module, group: Group
) -> tuple[np.ndarray, float | None]:
    """Score this rank's validation shard (every ``world``-th patient from ``rank``) with rank 0's
    batch-norm statistics, and gather every rank's scores back into patient order."""
    sync_buffers(model)
    if len(shard.dataset):  # type: ignore[arg-type]
        scores, mean_loss = predict(model, shard, device, criterion)
        loss_sum = float(mean_loss or 0.0) * len(scores)
    else:
        scores, loss_sum = np.zeros(0), 0.0
    parts = [cast(tuple[np.ndarray, float], part) for part in group.gather((scores, loss_sum))]
    gathered = np.zeros(sum(len(part_scores) for part_scores, _ in parts))
    for rank, (part_scores, _) in enumerate(parts):
        gathered[rank :: group.world] = part_scores
    return gathered, sum(part_loss for _, part_loss in parts) / len(gathered)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    scaler: torch.amp.GradScaler,
    *,
    group: Group | None = None,
    micro_batch: int = 0,
    precision: str = "float32",
) -> tuple[list[float], Timing]:
    """One pass over ``loader``; returns each batch's loss and the data-wait/compute split.

    Args:
        model: the network (wrapped in DistributedDataParallel under ``group``).
        loader: batches of ``(images, labels)``; under ``group`` this rank's share of every batch.
        criterion: the mean loss of a batch.
        optimizer: steps once per batch.
        device: where the batches go.
        scaler: gradient scaling for mixed precision (a no-op when disabled).
        group: the process group of a multi-process run: each rank's loss is its share's summed loss
            over the whole batch's sample count, times the number of ranks, so that DDP's gradient
            average is the gradient of the whole batch's mean loss; the loss returned is that mean.
        micro_batch: samples per forward/backward pass (0: the whole batch): each micro-batch's summed
            loss over the batch's sample count is back-propagated, so the accumulated gradient is the
            whole batch's; one optimiser step per batch.
        precision: the forward pass's autocast precision, resolved (float32: none).
    """
    model.train()
    losses: list[float] = []
    timing = Timing()
    summed = nn.CrossEntropyLoss(reduction="sum", ignore_index=IGNORE_LABEL)
    tick = time.perf_counter()
    for images, labels in loader:
        images = to_device(images, device)
        labels = labels.to(device, non_blocking=True)
        loaded = time.perf_counter()
        timing.data_wait_s += loaded - tick
        optimizer.zero_grad(set_to_none=True)
        if group is None and not 0 < micro_batch < len(labels):
            with autocast(device, precision):
                loss = criterion(model(images).float(), labels)
            scaler.scale(loss).backward()
            batch_loss = float(loss.detach())
        else:
            batch_loss = _accumulate(model, images, labels, summed, scaler, precision, group, micro_batch)
        scaler.step(optimizer)
        scaler.update()
        losses.append(batch_loss)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tick = time.perf_counter()
        timing.compute_s += tick - loaded
    return losses, timing


def _accumulate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    summed: nn.Module,
    scaler: torch.amp.GradScaler,
    precision: str,
    group: Group | None,
    micro_batch: int,
) -> float:
    """Back-propagate one batch (this rank's share under ``group``) in micro-batches of ``micro_batch``
    samples (0: at once); returns the whole batch's mean loss. Each part's loss is its summed loss over
    the batch's sample count (times the ranks under DDP, whose gradient average divides by them), so the
    accumulated gradient is that of the batch's mean loss; DDP synchronises on the last part only."""
    counted = (labels != IGNORE_LABEL).sum().to(torch.float32)
    batch_count = float(counted) if group is None else float(group.all_sum(counted.reshape(1))[0])
    weight = (1 if group is None else group.world) / batch_count
    size = micro_batch if 0 < micro_batch < len(labels) else max(len(labels), 1)
    starts = list(range(0, len(labels), size)) or [0]  # an empty share still joins DDP's all-reduce
    loss_sum = torch.zeros((), dtype=torch.float32, device=labels.device)
    for index, start in enumerate(starts):
        last = index == len(starts) - 1
        no_sync = getattr(model, "no_sync", None)
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            with autocast(images.device, precision):
                part = summed(model(images[start : start + size]).float(), labels[start : start + size])
            scaler.scale(part * weight).backward()
        loss_sum += part.detach()
    if group is not None:
        loss_sum = group.all_sum(loss_sum.reshape(1))[0]
    return float(loss_sum) / batch_count


@torch.inference_mode()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device, criterion: nn.Module | None = None
) -> tuple[np.ndarray, float | None]:
    """Probability of metastases per sample (loader order) and, with ``criterion``, the mean loss."""
    model.eval()
    scores: list[np.ndarray] = []
    total_loss, count = 0.0, 0
    for images, labels in loader:
        images = to_device(images, device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp_enabled(device)):
            logits = model(images).float()
        scores.append(torch.softmax(logits, dim=1)[:, 1].cpu().numpy())
        if criterion is not None:
            total_loss += float(criterion(logits, labels.to(device))) * len(labels)
            count += len(labels)
    mean_loss = total_loss / count if criterion is not None and count else None
    return np.concatenate(scores).astype(np.float64), mean_loss


def fit_check(
    model: nn.Module, loader: DataLoader, device: torch.device, labels: np.ndarray
) -> tuple[float, float]:
    """Mean cross-entropy and ROC AUC of ``model`` on its own training patients (``loader``: unaugmented,
    unshuffled), in evaluation mode: what it has learned, without the augmentation and dropout that make
    the training loss of the last epoch overstate chance."""
    scores, loss = predict(model, loader, device, nn.CrossEntropyLoss())
    auc = float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else 0.5
    return float(loss or 0.0), auc


@dataclass
class _Loaders:
    """What :func:`fit` iterates: the augmented training set (its epoch drives the augmentation) and the
    loaders of one run (this rank's share under DistributedDataParallel)."""

    train_set: PatientArrays
    train: DataLoader
    validation: DataLoader | None
    workers: int


def _make_loaders(
    params: TrainingParams,
    array_dir: Path,
    train: pd.DataFrame,
    validation: pd.DataFrame | None,
    *,
    seed: int,
    device: torch.device,
    group: Group | None,
) -> _Loaders:
    """The training loader (augmented, shuffled, seeded) and the validation loader, if any, of one fit."""
    processes = (
        fold_processes(params.parallel_folds, device, params.threads) if group is None else group.world
    )
    workers = loader_workers(params.num_workers, device, processes)
    train_set = PatientArrays(array_dir, train, Augmentation(params), seed=seed)
    val_set = None if validation is None else PatientArrays(array_dir, validation)
    val_loader = None
    if group is None:
        train_loader = make_loader(train_set, params.batch_size, True, seed, workers, device)
        if val_set is not None:
            val_loader = make_loader(val_set, params.batch_size, False, seed, workers, device)
    else:
        train_loader = _rank_loader(train_set, params.batch_size, seed, workers, device, group)
        if val_set is not None:  # this rank's shard of the validation patients; the scores are gathered
            shard = Subset(val_set, list(range(group.rank, len(val_set), group.world)))
            val_loader = make_loader(shard, params.batch_size, False, seed, workers, device)  # type: ignore[arg-type]
    return _Loaders(train_set, train_loader, val_loader, workers)


def _validate(
    network: nn.Module,
    model: nn.Module,
    loader: DataLoader,
    labels: np.ndarray,
    record: EpochRecord,
    *,
    device: torch.device,
    group: Group | None,
) -> tuple[EpochRecord, np.ndarray]:
    """``record`` completed with the validation loss, accuracy at 0.5 and AUC; the validation scores."""
    criterion = nn.CrossEntropyLoss()
    if group is None:
        scores, val_loss = predict(model, loader, device, criterion)
    else:
        scores, val_loss = _predict_gathered(network, loader, device, criterion, group)
    accuracy = float(np.mean((scores >= 0.5) == labels))
    auc = float(roc_auc_score(labels, scores))
    return EpochRecord(record.epoch, record.train_loss, val_loss, accuracy, auc), scores


def _log_fit(description: str, params: TrainingParams, result: FitResult) -> None:
    last = result.epochs[-1]
    log.info(
        "%s: %d epochs (%s), train loss %.4f (fitted: %s), val loss %s, val AUC %s, data wait %.1f%%",
        description,
        params.epochs,
        result.precision,
        last.train_loss,
        f"{result.fitted_loss:.4f}, AUC {result.fitted_auc:.3f}",
        "n/a" if last.val_loss is None else f"{last.val_loss:.4f}",
        "n/a" if last.val_auc is None else f"{last.val_auc:.3f}",
        100 * result.timing.data_wait_share,
    )


def fit(
    array_dir: Path,
    train: pd.DataFrame,
    validation: pd.DataFrame | None,
    params: TrainingParams,
    seed: int,
    device: torch.device,
    input_shape: tuple[int, ...],
    description: str = "train",
) -> FitResult:
    """Train ``params.model`` from scratch on ``train`` (patient, label) for ``params.epochs`` epochs.

    Adam with ``params.lr`` and ``params.weight_decay``, cross-entropy loss. After each epoch the model
    is scored on ``validation`` (if given): loss, accuracy at probability 0.5 and ROC AUC.
    """
    seed_everything(seed)
    group = current_group()
    network = prepare_model(build_model(params.model, input_shape), device)
    model = network
    if group is not None:
        network, model = wrap_model(network, device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    schedule = None
    if params.lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.epochs)
    precision = resolve_precision(params.precision, device, f"{params.section_name}.precision")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "float16")
    loaders = _make_loaders(params, array_dir, train, validation, seed=seed, device=device, group=group)
    result = FitResult(model=network, input_shape=tuple(input_shape), precision=precision)
    step = 0
    progress = tqdm(range(1, params.epochs + 1), desc=description, unit="epoch", leave=False, disable=None)
    for epoch in progress:
        loaders.train_set.set_epoch(epoch)
        losses, timing = train_one_epoch(
            model, loaders.train, criterion, optimizer, device, scaler,
            group=group, micro_batch=params.micro_batch, precision=precision,
        )  # fmt: skip
        result.timing.add(timing)
        if schedule is not None:
            schedule.step()
        for loss in losses:
            step += 1
            result.steps.append((step, epoch, loss))
        record = EpochRecord(epoch, float(np.mean(losses)), None, None, None)
        if loaders.validation is not None and validation is not None:
            labels = validation["label"].to_numpy()
            record, result.val_scores = _validate(
                network, model, loaders.validation, labels, record, device=device, group=group
            )
        result.epochs.append(record)
        progress.set_postfix(loss=f"{record.train_loss:.3f}")
        log.debug("%s epoch %d: %s", description, epoch, record)
    if group is not None:
        sync_buffers(network)  # every rank judges rank 0's model alike, so all take the same restart decision
    unaugmented = PatientArrays(array_dir, train)
    fitted = make_loader(unaugmented, params.batch_size, False, seed, loaders.workers, device)
    result.fitted_loss, result.fitted_auc = fit_check(network, fitted, device, train["label"].to_numpy())
    _log_fit(description, params, result)
    return result
