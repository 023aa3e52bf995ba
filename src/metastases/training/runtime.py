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
        # deterministic mode also fills every new uninitialised tensor with NaN (a debugging aid); those
        # tensors are always overwritten, so skipping it changes no byte (tested) and saves 14-24 % of a
        # 2D training step on the CPU (torch.profiler: aten::fill_ was its largest operator)
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
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
    log.debug("device: %s", device)
    return device


def amp_enabled(device: torch.device) -> bool:
    """Mixed precision (float16 autocast with gradient scaling) for inference on CUDA only; full float32
    on the CPU (scoring is cheap; training's precision is :func:`resolve_precision`'s)."""
    return device.type == "cuda"


PRECISIONS = ("auto", "float32", "bfloat16", "float16")
"""``train_<dim>.precision`` choices: the autocast dtype of the forward pass (weights stay float32)."""


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX): only then is it faster."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(setting: str, device: torch.device, key: str = "precision") -> str:
    """The precision a training run uses: ``float32``, ``bfloat16`` or ``float16``.

    ``auto``: float16 mixed precision on CUDA, float32 on the CPU. bfloat16 is an explicit choice on a
    CPU that computes it natively: 1.5x faster for the 3D default (measured on an AMD EPYC with AVX-512
    BF16), but the model learned less well over training seeds 42-44 (out-of-fold AUC 0.836 +- 0.057
    against 0.890 +- 0.019 in float32, docs/speed.md). An explicit choice the device cannot honour is a
    :class:`ParamsError` naming ``key``.
    """
    if setting == "auto":
        return "float16" if device.type == "cuda" else "float32"
    if setting not in PRECISIONS:
        raise ParamsError(f"{key}: {setting!r} is not one of {', '.join(PRECISIONS)}")
    if setting == "float16" and device.type != "cuda":
        raise ParamsError(f"{key}: float16 needs a CUDA device; on the CPU use auto, float32 or bfloat16")
    if setting == "bfloat16" and device.type == "cpu" and not native_bfloat16():
        raise ParamsError(
            f"{key}: bfloat16 needs a CPU with AVX-512 BF16 or AMX, which this one lacks; use auto or float32"
        )
    if setting == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ParamsError(f"{key}: bfloat16 is not supported by this GPU; use auto, float16 or float32")
    return setting


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The forward pass's autocast context for a resolved ``precision`` (disabled for float32)."""
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "float32")


def _memory_format(dims: int) -> torch.memory_format:
    """Channels-last for a batch of ``dims`` axes: 4 (2D images) or 5 (3D volumes)."""
    return torch.channels_last if dims == 4 else torch.channels_last_3d


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` with its convolution weights channels-last: oneDNN's CPU kernels and cuDNN's
    mixed-precision kernels are faster so (measured on 2 cores: the 2D default's step 22.6 -> 11.8 ms per
    sample, the 3D default's 26.4 -> 20.5 in float32)."""
    model = model.to(device)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)]
    if convs:
        model = model.to(memory_format=_memory_format(convs[0].weight.dim()))
    return model


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device`` (asynchronously from pinned memory); channels-last on CUDA."""
    batch = batch.to(device, non_blocking=True)
    if device.type == "cuda" and batch.dim() in (4, 5):
        batch = batch.contiguous(memory_format=_memory_format(batch.dim()))
    return batch


def fold_processes(setting: int | str, device: torch.device, threads: int) -> int:
    """Fold models trained at once: ``setting`` when a number; ``auto``: on the CPU one process per
    ``threads`` cores (measured on 2 cores, train-2d: 94 s with 2 at a time, 101 s with 3, 101 s with 5,
    the same bytes), on CUDA 1 (the processes would share one GPU)."""
    if setting != "auto":
        return int(setting)
    if device.type == "cuda":
        return 1
    return max(1, (os.cpu_count() or 1) // max(1, threads))


CUDA_LOADER_WORKERS = 8
"""The most DataLoader workers ``num_workers: auto`` starts per training process on CUDA."""


def loader_workers(setting: int | str, device: torch.device, processes: int = 1) -> int:
    """DataLoader workers per training process: ``setting`` when a number; ``auto``: 0 on the CPU (the
    training process loads and augments its own batches: a sample takes 1.5-3.5 ms, less than starting a
    worker process every epoch), on CUDA enough to keep the GPU fed: the cores
    shared out over the ``processes`` training processes, at most :data:`CUDA_LOADER_WORKERS`."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    return max(1, min(CUDA_LOADER_WORKERS, (os.cpu_count() or 1) // max(1, processes) - 1))
