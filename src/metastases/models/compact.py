"""A compact CNN for 2D or 3D input through one ``spatial_dims`` switch (``compact2d``, ``compact3d``,
``compact3d_max``: the project's earlier defaults, kept for comparison).

Four stages of convolution (kernel 3), batch normalisation and ReLU, each halving the in-plane size,
then global pooling, dropout and one linear layer. In 3D the first stage keeps the depth (20 slices is
already shallow), later stages halve it too. It has about 0.1-0.4 M parameters, which suits a cohort of
tens to hundreds of patients trained from scratch on a CPU.

The global pooling is ``avg`` (the mean over positions), ``max`` (the strongest response anywhere) or
``avgmax`` (both, concatenated). A metastasis fills a few voxels of a 20 x 64 x 64 volume, so an
average over positions dilutes it; the maximum keeps it. With its image-wide field of view the max-pooled
3D version still memorised the training patients; the shallow ``VolumeMIL`` replaced it as ``cnn3d``.
"""

from __future__ import annotations

import torch
from torch import nn

from metastases.models.layers import conv_stages

POOLINGS = ("avg", "max", "avgmax")


class CompactCNN(nn.Module):
    """Input ``[B, C, S, S]`` (``spatial_dims=2``) or ``[B, C, D, S, S]`` (``3``); output ``[B, classes]``."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int = 2,
        channels: tuple[int, ...] = (16, 32, 64, 128),
        dropout: float = 0.2,
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        strides: list[int | tuple[int, int, int]] = [2] * len(channels)
        if spatial_dims == 3:
            strides[0] = (1, 2, 2)  # 20 slices are already shallow: keep the depth in the first stage
        self.features = conv_stages(spatial_dims, in_channels, channels, strides)
        self.pooling = pooling
        pooled = 2 * channels[-1] if pooling == "avgmax" else channels[-1]
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(pooled, num_classes))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, F, *positions]`` feature maps -> ``[B, F]`` (``2F`` for ``avgmax``) by global pooling."""
        flat = torch.flatten(features, 2)
        pooled = []
        if self.pooling in ("avg", "avgmax"):
            pooled.append(flat.mean(dim=2))
        if self.pooling in ("max", "avgmax"):
            pooled.append(flat.amax(dim=2))
        return torch.cat(pooled, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))
