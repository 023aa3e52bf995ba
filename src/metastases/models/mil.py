"""The default networks: a shallow lesion detector scored everywhere, pooled into one patient score.

A metastasis is a few pixels somewhere in one or two slices. A network that mixes the whole image in its
first layers and averages over it dilutes the lesion below the noise and, with tens of patients,
memorises them instead. This multiple-instance network instead learns a *local* detector: a few
convolution stages (FLAIR, T2 and T1+C of the same voxels as channels, so enhancement and oedema are seen
together) end in a 1x1 convolution that gives every location a lesion score (a logit); the patient's
logit pools these scores. The location scores are the model's evidence map (:meth:`MILNet.evidence`).

One class serves both layouts through ``spatial_dims`` (MONAI's convention):

- ``spatial_dims=3``: input ``[B, sequences, D, S, S]``, a 3D detector (the depth is kept: 20 slices of
  5 mm are already coarse).
- ``spatial_dims=2``: input ``[B, sequences * D, S, S]`` (channel ``sequence * D + slice``); every slice
  is an instance ``[sequences, S, S]`` for one shared 2D detector, and the scores of all slices are pooled.

Pooling is a log-sum-exp with a learned sharpness ``r``, ``(1/r) log mean exp(r s)``: between the mean
(small ``r``) and the maximum (large ``r``). A hard maximum passes the gradient to one location per
patient, so the detector learns from one guess at a time and sat at chance for 10-25 epochs before it
found the lesions; the smooth pool spreads the gradient over the strongest candidates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from metastases.models.layers import conv_stages

POOLINGS = ("lse", "max", "mean")
OUTSIDE = -20.0
"""Score of a location outside the brain mask: a logit no pooling or loss will pick."""


class MILNet(nn.Module):
    """Multiple-instance lesion detector; output ``[B, 2]`` logits (normal, metastases).

    Args:
        spatial_dims: 2 (slices as instances) or 3 (one volume).
        in_channels: input channels: ``sequences * depth`` for 2D, ``sequences`` for 3D.
        sequences: MR sequences per patient (the 2D layout is reshaped to one instance per slice).
        channels: width of each convolution stage (kernel 3, batch norm, ReLU).
        strides: stride of each stage (an int, or a tuple per spatial axis).
        pooling: ``lse`` (learned sharpness), ``max`` or ``mean`` over all location scores.
        sharpness: initial ``r`` of the log-sum-exp pool.
        dropout: dropout on the last feature map before the location scores.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        sequences: int = 3,
        channels: Sequence[int] = (16, 32, 32),
        strides: Sequence[int | tuple[int, ...]] = (2, 2, 1),
        pooling: str = "lse",
        sharpness: float = 4.0,
        dropout: float = 0.1,
        negative_weight: float = 0.0,
        brain_margin: float = 0.0,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if spatial_dims == 2 and in_channels % sequences:
            raise ValueError(f"in_channels {in_channels} is not a multiple of {sequences} sequences")
        self.spatial_dims = spatial_dims
        self.sequences = sequences
        self.pooling = pooling
        self.encoder = conv_stages(spatial_dims, sequences if spatial_dims == 2 else in_channels, channels,
                                   strides)  # fmt: skip
        dropout_layer = nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.score = nn.Sequential(dropout_layer(dropout), conv(channels[-1], 1, kernel_size=1))
        # log r is learned, so the pool may sharpen towards a maximum as the detector gets confident
        self.log_sharpness = nn.Parameter(torch.tensor(math.log(sharpness)))
        self.negative_weight = negative_weight
        self.brain_margin = brain_margin
        self._maps: torch.Tensor | None = None

    def auxiliary_loss(self, labels: torch.Tensor) -> torch.Tensor | None:
        """Every location of a normal patient is a known negative: mean BCE of their scores toward 0."""
        maps, self._maps = self._maps, None
        if maps is None or not self.negative_weight:
            return None
        negatives = maps[labels == 0]
        inside = negatives > OUTSIDE
        if not bool(inside.any()):
            return maps.sum() * 0.0
        share = negatives.shape[0] / len(labels)
        return self.negative_weight * nn.functional.softplus(negatives[inside]).mean() * share

    def brain_mask(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, S, S]`` bool: inside the head, at least ``brain_margin * S`` pixels from its outline.

        The head is every voxel brighter than the sample's background (its minimum) by half a standard
        deviation in any sequence; eroding it in-plane removes the scalp and skull, whose bright edges
        otherwise look like lesion rims to a local detector. All True when ``brain_margin`` is 0.
        """
        batch, size = x.shape[0], x.shape[-1]
        volume = x.reshape(batch, self.sequences, -1, size, size)
        background = volume.flatten(1).amin(dim=1).view(batch, 1, 1, 1)
        head = volume.amax(dim=1) > background + 0.5  # [B, D, S, S]
        radius = round(self.brain_margin * size)
        if radius < 1:
            return head | True
        outside = (~head).float().flatten(0, 1)[:, None]  # [B * D, 1, S, S]
        grown = nn.functional.max_pool2d(outside, 2 * radius + 1, stride=1, padding=radius)
        return (grown[:, 0] < 0.5).reshape(head.shape)

    def evidence(self, x: torch.Tensor) -> torch.Tensor:
        """Location scores (logits): ``[B, D, h, w]`` for 2D (one map per slice), ``[B, d, h, w]`` for 3D.

        Locations outside the brain mask (:meth:`brain_mask`) score :data:`OUTSIDE`.
        """
        if self.spatial_dims == 2:
            batch, channels, height, width = x.shape
            depth = channels // self.sequences
            slices = x.reshape(batch, self.sequences, depth, height, width).transpose(1, 2)
            maps = self.score(self.encoder(slices.reshape(batch * depth, self.sequences, height, width)))
            maps = maps.reshape(batch, depth, *maps.shape[-2:])
        else:
            maps = self.score(self.encoder(x))[:, 0]
        if self.brain_margin <= 0:
            return maps
        with torch.no_grad():
            mask = self.brain_mask(x).float()
            inside = nn.functional.interpolate(mask[:, None], size=maps.shape[1:], mode="trilinear") > 0.5
        return torch.where(inside[:, 0], maps, torch.full_like(maps, OUTSIDE))

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """One logit per patient from its location scores."""
        flat = maps.flatten(1)
        if self.pooling == "max":
            return flat.amax(dim=1)
        if self.pooling == "mean":
            return flat.mean(dim=1)
        r = self.log_sharpness.exp()
        return (torch.logsumexp(r * flat, dim=1) - math.log(flat.shape[1])) / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.evidence(x)
        if self.training:
            self._maps = maps
        logit = self.pool(maps)
        return torch.stack([torch.zeros_like(logit), logit], dim=1)
