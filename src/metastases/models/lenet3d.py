"""The original study's 3D network: LeNet with 3D convolutions, made independent of the in-plane size.

Input ``[B, 3, D, S, S]`` (sequence as channel, then depth, height, width), output ``[B, 2]`` logits.

Exactly the seed's network at ``S = 512``: convolutions 3->6->16->32->64 with kernels (2,32,32),
(2,16,16), (2,8,8), (2,4,4), each followed by ReLU and average pooling (1,3,3), then linear layers
9216->2000->120->84->2. Two documented adaptations make it run at smaller ``S``:

* the in-plane kernel sizes are scaled by ``S / 512`` (rounded, at least 1), because the original
  kernels need ``S`` of about 301 or more to leave any feature map at all;
* an in-plane pooling window is clipped to the feature map when the map is narrower than 3 pixels,
  so small inputs do not pool to nothing.

The input of the first linear layer is computed from ``(D, S)`` instead of being hard-wired to 9216.
"""

from __future__ import annotations

import torch
from torch import nn

STUDY_SIZE = 512
STUDY_KERNELS = (32, 16, 8, 4)
CHANNELS = (6, 16, 32, 64)
POOL = 3


def scaled_kernel(kernel: int, size: int) -> int:
    """In-plane kernel for input size ``size``: the seed's kernel scaled by ``size / 512``, at least 1."""
    if size >= STUDY_SIZE:
        return kernel
    return max(1, round(kernel * size / STUDY_SIZE))


class LeNet3D(nn.Module):
    """The seed's LeNet-3D for ``[B, in_channels, depth, size, size]`` input."""

    def __init__(self, in_channels: int = 3, depth: int = 20, size: int = 512, num_classes: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels_in, d, s = in_channels, depth, size
        for channels_out, study_kernel in zip(CHANNELS, STUDY_KERNELS, strict=True):
            k = scaled_kernel(study_kernel, size)
            if d < 2 or s < k:
                raise ValueError(f"LeNet3D: input depth {depth} x size {size} is too small")
            layers += [nn.Conv3d(channels_in, channels_out, kernel_size=(2, k, k)), nn.ReLU(inplace=True)]
            d, s = d - 1, s - k + 1
            pool = min(POOL, s)  # adaptation: never pool a map narrower than the window to nothing
            layers.append(nn.AvgPool3d(kernel_size=(1, pool, pool)))
            s //= pool
            channels_in = channels_out
        self.features = nn.Sequential(*layers)
        self.flat_features = channels_in * d * s * s
        self.classifier = nn.Sequential(
            nn.Linear(self.flat_features, 2000),
            nn.ReLU(inplace=True),
            nn.Linear(2000, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C, D, S, S]``; returns ``[B, num_classes]`` logits."""
        return self.classifier(torch.flatten(self.features(x), 1))
