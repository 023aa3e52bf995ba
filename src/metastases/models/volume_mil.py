"""A multiple-instance 3D model: a shallow 3D lesion detector, max-pooled over the whole volume.

The 3D counterpart of :class:`~metastases.models.slice_mil.SliceMIL`. FLAIR, T2 and T1+C enter as the
three channels of one ``[3, D, S, S]`` volume, so every convolution sees the three sequences of the
same voxels together (a metastasis: a dark necrotic core and enhancing rim on T1+C inside oedema that
is bright on FLAIR; a mimic is bright on FLAIR but normal on T1+C). The encoder is shallow and keeps
the depth (20 slices of 5 mm are already coarse), so each output cell is a local detector whose field
of view, about 15 pixels by 7 slices, holds a 10-20 mm lesion and its surroundings. The maximum over
all positions makes the patient positive when a lesion is anywhere; a deep network with an
image-wide field of view instead memorised the training patients (see the benchmark in the README).

Weakly supervised detectors of this kind memorise a few dozen patients before they find the lesions: on
the 60-patient demo cohort (48 training patients) this one scored out-of-fold AUC 0.36 at 64 px without
augmentation (below chance: it had learned the training patients), 0.72 with in-plane rotation and
scaling (120 epochs), and 0.91 at 96 px on the head-cropped field of view with that augmentation (80
epochs), the default. The measurements are in the README.
"""

from __future__ import annotations

import torch
from torch import nn

from metastases.models.layers import conv_stages, location_logits

Stride = tuple[int, int, int]


class VolumeMIL(nn.Module):
    """Input ``[B, C, D, S, S]``; output ``[B, classes]`` logits.

    One stage per entry of ``channels`` (3x3x3 convolution with the matching entry of ``strides``,
    batch normalisation, ReLU), global max over depth and plane, dropout, one linear layer.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        channels: tuple[int, ...] = (8, 16, 32),
        strides: tuple[Stride, ...] = ((1, 2, 2), (1, 2, 2), (1, 1, 1)),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.encoder = conv_stages(3, in_channels, channels, strides)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(channels[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)  # [B, F, d, h, w]
        return self.classifier(torch.amax(features, dim=(2, 3, 4)))  # strongest response anywhere

    def evidence(self, x: torch.Tensor) -> torch.Tensor:
        """Per-location evidence ``[B, d, h, w]``: the metastasis-minus-normal logit of each feature-map cell
        (:func:`~metastases.models.layers.location_logits`); with the default strides ``d = D``, ``h, w`` =
        ``S`` / 4."""
        linear = self.classifier[-1]
        assert isinstance(linear, nn.Linear)
        return location_logits(self.encoder(x), linear)
