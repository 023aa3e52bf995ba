"""Training and evaluation loops in the manner of torchvision's references/classification/train.py.

``train_one_epoch`` and ``predict`` are the two building blocks; ``fit`` wires them for one model,
one training set and an optional validation set, and records what the plots and metrics need.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from metastases.models import build_model
from metastases.params import TrainParams
from metastases.training.dataset import Augmentation, PatientArrays
from metastases.training.runtime import amp_enabled, seed_everything

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


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    scaler: torch.amp.GradScaler,
) -> tuple[list[float], Timing]:
    """One pass over ``loader``; returns each batch's loss and the data-wait/compute split."""
    model.train()
    losses: list[float] = []
    timing = Timing()
    amp = amp_enabled(device)
    tick = time.perf_counter()
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        loaded = time.perf_counter()
        timing.data_wait_s += loaded - tick
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tick = time.perf_counter()
        timing.compute_s += tick - loaded
    return losses, timing


@torch.inference_mode()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device, criterion: nn.Module | None = None
) -> tuple[np.ndarray, float | None]:
    """Probability of metastases per sample (loader order) and, with ``criterion``, the mean loss."""
    model.eval()
    scores: list[np.ndarray] = []
    total_loss, count = 0.0, 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp_enabled(device)):
            logits = model(images).float()
        scores.append(torch.softmax(logits, dim=1)[:, 1].cpu().numpy())
        if criterion is not None:
            total_loss += float(criterion(logits, labels.to(device))) * len(labels)
            count += len(labels)
    mean_loss = total_loss / count if criterion is not None and count else None
    return np.concatenate(scores).astype(np.float64), mean_loss


def fit(
    array_dir: Path,
    train: pd.DataFrame,
    validation: pd.DataFrame | None,
    params: TrainParams,
    epochs: int,
    seed: int,
    device: torch.device,
    input_shape: tuple[int, ...],
    description: str = "train",
) -> FitResult:
    """Train ``params.model`` from scratch on ``train`` (patient, label) for ``epochs`` epochs.

    Adam with ``params.lr`` and ``params.weight_decay``, cross-entropy loss. After each epoch the model
    is scored on ``validation`` (if given): loss, accuracy at probability 0.5 and ROC AUC.
    """
    seed_everything(seed)
    model = build_model(params.model, input_shape).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    schedule = None
    if params.lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_enabled(device))
    train_set = PatientArrays(array_dir, train, Augmentation.from_params(params), seed=seed)
    train_loader = make_loader(train_set, params.batch_size, True, seed, params.num_workers, device)
    val_loader = None
    if validation is not None:
        val_set = PatientArrays(array_dir, validation)
        val_loader = make_loader(val_set, params.batch_size, False, seed, params.num_workers, device)
    result = FitResult(model=model, input_shape=tuple(input_shape))
    step = 0
    progress = tqdm(range(1, epochs + 1), desc=description, unit="epoch", leave=False, disable=None)
    for epoch in progress:
        train_set.set_epoch(epoch)
        losses, timing = train_one_epoch(model, train_loader, criterion, optimizer, device, scaler)
        result.timing.add(timing)
        if schedule is not None:
            schedule.step()
        for loss in losses:
            step += 1
            result.steps.append((step, epoch, loss))
        record = EpochRecord(epoch, float(np.mean(losses)), None, None, None)
        if val_loader is not None and validation is not None:
            scores, val_loss = predict(model, val_loader, device, criterion)
            labels = validation["label"].to_numpy()
            record = EpochRecord(
                epoch,
                record.train_loss,
                val_loss,
                float(np.mean((scores >= 0.5) == labels)),
                float(roc_auc_score(labels, scores)),
            )
            result.val_scores = scores
        result.epochs.append(record)
        progress.set_postfix(loss=f"{record.train_loss:.3f}")
        log.debug("%s epoch %d: %s", description, epoch, record)
    last = result.epochs[-1]
    log.info(
        "%s: %d epochs, train loss %.4f, val loss %s, val AUC %s, data wait %.1f%% of step time",
        description,
        epochs,
        last.train_loss,
        "n/a" if last.val_loss is None else f"{last.val_loss:.4f}",
        "n/a" if last.val_auc is None else f"{last.val_auc:.3f}",
        100 * result.timing.data_wait_share,
    )
    return result
