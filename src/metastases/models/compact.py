"""A compact CNN for 2D or 3D input through one ``spatial_dims`` switch (the project's default models).

Four stages of convolution (kernel 3), batch normalisation and ReLU, each halving the in-plane size,
then global average pooling, dropout and one linear layer. In 3D the first stage keeps the depth
(20 slices is already shallow), later stages halve it too. It has about 0.1-0.4 M parameters, which
suits a cohort of tens to hundreds of patients trained from scratch on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn


class CompactCNN(nn.Module):
    """Input ``[B, C, S, S]`` (``spatial_dims=2``) or ``[B, C, D, S, S]`` (``3``); output ``[B, classes]``."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int = 2,
        channels: tuple[int, ...] = (16, 32, 64, 128),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        pool = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(1)
        layers: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(channels):
            stride: int | tuple[int, int, int] = 2
            if spatial_dims == 3 and index == 0:
                stride = (1, 2, 2)
            layers += [
                conv(previous, width, kernel_size=3, stride=stride, padding=1, bias=False),
                norm(width),
                nn.ReLU(inplace=True),
            ]
            previous = width
        self.features = nn.Sequential(*layers)
        self.pool = pool
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(previous, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
