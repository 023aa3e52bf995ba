"""The original study's 2D network: AlexNet with a 60-channel first convolution, layer for layer.

Input ``[B, 60, S, S]`` (three sequences x 20 slices as channels), output ``[B, 2]`` logits.
The adaptive 6x6 pooling makes it work for any ``S`` >= 63; the seed used ``S = 512``.
"""

from __future__ import annotations

import torch
from torch import nn


class AlexNet2D(nn.Module):
    """AlexNet as in SEED.md: five convolutions, adaptive average pool to 6x6, three linear layers."""

    def __init__(self, in_channels: int = 60, num_classes: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C, S, S]`` normalised intensities; returns ``[B, num_classes]`` logits."""
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
