"""The building block the project's own networks share: a stack of convolution stages."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

Stride = int | tuple[int, ...]


def conv_stages(
    spatial_dims: int, in_channels: int, channels: Sequence[int], strides: Sequence[Stride]
) -> nn.Sequential:
    """One stage per entry of ``channels``: kernel-3 convolution (padding 1, no bias) with the matching
    entry of ``strides``, batch normalisation, ReLU; 2D or 3D by ``spatial_dims``."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if len(channels) != len(strides):
        raise ValueError(f"{len(channels)} channel widths but {len(strides)} strides")
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
    layers: list[nn.Module] = []
    previous = in_channels
    for width, stride in zip(channels, strides, strict=True):
        layers += [
            conv(previous, width, kernel_size=3, stride=stride, padding=1, bias=False),  # type: ignore[arg-type]
            norm(width),
            nn.ReLU(inplace=True),
        ]
        previous = width
    return nn.Sequential(*layers)


def location_logits(features: torch.Tensor, head: nn.Linear) -> torch.Tensor:
    """Class activation map: the metastasis-minus-normal logit that ``head`` would give each location of
    ``features`` ``[N, F, *spatial]`` alone (Zhou et al. 2016), ``[N, *spatial]``.

    For a network that pools its features over space and then applies ``head``, this says which location
    carries the evidence; with max pooling the patient's score is driven by its strongest locations.
    """
    weight = head.weight[1] - head.weight[0]  # [F]
    bias = head.bias[1] - head.bias[0] if head.bias is not None else features.new_zeros(())
    shape = (1, -1) + (1,) * (features.dim() - 2)
    return (features * weight.reshape(shape)).sum(dim=1) + bias
