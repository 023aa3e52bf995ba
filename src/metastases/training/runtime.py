"""Where and how torch runs: one call seeds everything, a determinism switch, device and thread choice."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

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
