"""Where and how torch runs: one call seeds everything, a determinism switch, device and thread choice."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch
from torch import nn

from metastases.errors import ParamsError

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_torch(deterministic: bool, threads: int, device: torch.device) -> None:
    """Set the intra-op thread count and, if asked, deterministic algorithms.

    On CUDA a few kernels (e.g. adaptive pooling's backward) have no deterministic version; there the
    switch warns instead of failing, so identical numbers are guaranteed on CPU only.
    """
    torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = device.type == "cuda"


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA device when present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ParamsError(f"device {name!r}: no CUDA device is available; use device: auto or cpu")
    log.info("device: %s", device)
    return device


def amp_enabled(device: torch.device) -> bool:
    """Mixed precision (float16 autocast with gradient scaling) on CUDA only; full float32 on the CPU."""
    return device.type == "cuda"


def _memory_format(dims: int) -> torch.memory_format:
    """Channels-last for a batch of ``dims`` axes: 4 (2D images) or 5 (3D volumes)."""
    return torch.channels_last if dims == 4 else torch.channels_last_3d


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``; on CUDA its convolution weights channels-last (faster cuDNN kernels with
    mixed precision). On the CPU nothing but the move, so CPU results stay as they are."""
    model = model.to(device)
    if device.type == "cuda":
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)]
        if convs:
            model = model.to(memory_format=_memory_format(convs[0].weight.dim()))
    return model


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device`` (asynchronously from pinned memory); channels-last on CUDA only."""
    batch = batch.to(device, non_blocking=True)
    if device.type == "cuda" and batch.dim() in (4, 5):
        batch = batch.contiguous(memory_format=_memory_format(batch.dim()))
    return batch


CUDA_LOADER_WORKERS = 8
"""The most DataLoader workers ``num_workers: auto`` starts per training process on CUDA."""


def loader_workers(setting: int | str, device: torch.device, processes: int = 1) -> int:
    """DataLoader workers per training process: ``setting`` when a number; ``auto``: 1 on the CPU (one
    worker beside the training thread suits 2 cores), on CUDA enough to keep the GPU fed: the cores
    shared out over the ``processes`` training processes, at most :data:`CUDA_LOADER_WORKERS`."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 1
    return max(1, min(CUDA_LOADER_WORKERS, (os.cpu_count() or 1) // max(1, processes) - 1))
