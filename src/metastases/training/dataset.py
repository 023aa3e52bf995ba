"""A torch dataset that streams one patient's stored array at a time, with seeded augmentation.

Arrays are opened memory-mapped and converted to float32 per sample, so a cohort at S = 512 need not
fit in memory. Random augmentation draws from a generator seeded by (seed, epoch, sample index): the
same run gives the same augmented samples whatever the number of loader workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from metastases.params import SEQUENCES, TrainParams


@dataclass(frozen=True)
class Augmentation:
    """Random transforms on normalised (z-scored) intensities; amplitudes in standard deviations."""

    flip_horizontal: float = 0.5
    flip_vertical: float = 0.0
    noise_std: float = 0.1
    intensity_shift: float = 0.1
    rotate_degrees: float = 0.0
    scale: float = 0.0

    @classmethod
    def from_params(cls, params: TrainParams) -> Augmentation:
        return cls(
            params.flip_horizontal,
            params.flip_vertical,
            params.noise_std,
            params.intensity_shift,
            params.rotate_degrees,
            params.scale,
        )

    def _affine(self, tensor: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """One random in-plane rotation and isotropic scaling for every slice and sequence (bilinear;
        outside the image: the sample's minimum, i.e. background)."""
        angle = math.radians(rng.uniform(-self.rotate_degrees, self.rotate_degrees))
        zoom = 1.0 + rng.uniform(-self.scale, self.scale)
        planes = tensor.reshape(1, -1, *tensor.shape[-2:])
        background = float(planes.min())
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=planes.dtype)
        grid = nn.functional.affine_grid(theta, list(planes.shape), align_corners=False)
        moved = nn.functional.grid_sample(planes - background, grid, mode="bilinear", align_corners=False)
        return (moved + background).reshape(tensor.shape)

    def __call__(self, sample: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Augment one stored sample, ``[60, S, S]`` or ``[3, 20, S, S]``; returns a new float32 tensor.

        Flips act on the in-plane axes (last two), alike for every sequence and slice. The intensity
        shift is one offset per sequence (the 2D layout's channel is ``sequence * 20 + slice``). The
        noise is drawn by torch (twice as fast as NumPy's) from a generator seeded by ``rng``.
        """
        out = sample
        if rng.random() < self.flip_horizontal:
            out = out[..., ::-1]
        if rng.random() < self.flip_vertical:
            out = out[..., ::-1, :]
        tensor = torch.from_numpy(np.array(out, dtype=np.float32))  # a copy: the memory map stays untouched
        if self.rotate_degrees > 0 or self.scale > 0:
            tensor = self._affine(tensor, rng)
        if self.intensity_shift > 0:
            shifts = rng.uniform(-self.intensity_shift, self.intensity_shift, size=len(SEQUENCES))
            tensor.view(len(SEQUENCES), -1).add_(torch.from_numpy(shifts.astype(np.float32))[:, None])
        if self.noise_std > 0:
            generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
            tensor.add_(torch.randn(tensor.shape, generator=generator), alpha=self.noise_std)
        return tensor


class PatientArrays(Dataset[tuple[torch.Tensor, int]]):
    """Samples ``(x, label)`` for a fixed list of patients; ``x`` is float32 ``[60,S,S]`` or ``[3,D,S,S]``."""

    def __init__(
        self,
        array_dir: Path,
        patients: pd.DataFrame,
        augmentation: Augmentation | None = None,
        seed: int = 0,
    ) -> None:
        self.array_dir = Path(array_dir)
        self.patients = [str(p) for p in patients["patient"]]
        self.labels = [int(v) for v in patients["label"]]
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw a fresh, reproducible set of augmentations for each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        stored = np.load(self.array_dir / f"{self.patients[index]}.npy", mmap_mode="r")
        if self.augmentation is None:
            return torch.from_numpy(np.array(stored, dtype=np.float32)), self.labels[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return self.augmentation(stored, rng), self.labels[index]
