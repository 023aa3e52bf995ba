"""A multiple-instance 2D model: one shared encoder per slice, max-pooled over slices and space.

The 2D layout stores a patient as ``[60, S, S]`` with channel ``sequence * depth + slice`` (3 sequences
x ``depth`` slices). A metastasis is a few pixels somewhere in one or two slices, so a net that mixes
all 60 channels in its first layer and averages over the image dilutes it below the noise. This model
instead treats every slice as an instance: it reshapes the input to ``[B * depth, 3, S, S]`` (FLAIR, T2
and T1+C of the same slice as colour channels, so enhancement and oedema are seen together), runs one
small shared 2D encoder on each, and takes the maximum over slices and positions: a lesion anywhere
makes the patient positive, and the network learns a local lesion detector rather than a global
appearance. About 6 k parameters: few enough to learn from tens of patients.
"""

from __future__ import annotations

import torch
from torch import nn

from metastases.models.layers import conv_stages, location_logits


class SliceMIL(nn.Module):
    """Input ``[B, sequences * depth, S, S]``; output ``[B, classes]`` logits.

    The encoder has one stage per entry of ``channels`` (3x3 convolution with stride 2, batch
    normalisation, ReLU), so with three stages a feature-map cell covers 8 pixels (15 mm at S = 128 over
    a 240 mm field of view) and sees about 15 pixels: room for a lesion and its surroundings.
    """

    def __init__(
        self,
        in_channels: int = 60,
        sequences: int = 3,
        num_classes: int = 2,
        channels: tuple[int, ...] = (8, 16, 32),
        strides: tuple[int, ...] = (2, 2, 2),
        context: int = 0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if in_channels % sequences:
            raise ValueError(f"in_channels {in_channels} is not a multiple of {sequences} sequences")
        self.sequences = sequences
        self.depth = in_channels // sequences
        self.context = context
        self.encoder = conv_stages(2, sequences * (2 * context + 1), channels, list(strides))
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(channels[-1], num_classes))

    def instances(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, sequences * depth, S, S]`` -> ``[B * depth, sequences * (2 context + 1), S, S]``: one
        instance per slice, holding its sequences and those of ``context`` neighbours on each side (the
        first and last slices repeat at the ends)."""
        batch, _, height, width = x.shape
        volume = x.reshape(batch, self.sequences, self.depth, height, width)
        if self.context:
            first, last = volume[:, :, :1], volume[:, :, -1:]
            padded = torch.cat([first] * self.context + [volume] + [last] * self.context, dim=2)
            volume = torch.cat([padded[:, :, k : k + self.depth] for k in range(2 * self.context + 1)], dim=1)
        slices = volume.transpose(1, 2)  # [B, depth, channels, S, S]
        return slices.reshape(batch * self.depth, -1, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(self.instances(x))  # [B * depth, F, h, w]
        per_slice = torch.amax(features, dim=(2, 3))  # strongest response in each slice
        pooled = per_slice.reshape(x.shape[0], self.depth, -1).amax(dim=1)  # ... and over slices
        return self.classifier(pooled)

    def evidence(self, x: torch.Tensor) -> torch.Tensor:
        """Per-location evidence ``[B, depth, h, w]``: the metastasis-minus-normal logit of each feature-map
        cell of each slice (:func:`~metastases.models.layers.location_logits`); ``h, w`` = ``S`` / 8."""
        features = self.encoder(self.instances(x))  # [B * depth, F, h, w]
        linear = self.classifier[-1]
        assert isinstance(linear, nn.Linear)
        maps = location_logits(features, linear)
        return maps.reshape(x.shape[0], self.depth, *maps.shape[1:])
