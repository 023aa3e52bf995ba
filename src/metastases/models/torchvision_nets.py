"""torchvision's ResNet-18 (2D, 60-channel stem) and video ResNets (3D), built with ``weights=None``.

Nothing is downloaded: every network is trained from scratch.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet18
from torchvision.models.video import mc3_18, r2plus1d_18, r3d_18

VIDEO_NETS = {"r3d_18": r3d_18, "mc3_18": mc3_18, "r2plus1d_18": r2plus1d_18}


def resnet18_2d(in_channels: int = 60, num_classes: int = 2) -> nn.Module:
    """ResNet-18 for ``[B, in_channels, S, S]``: the stem convolution takes all sequence-slice channels."""
    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def video_resnet(name: str, in_channels: int = 3, num_classes: int = 2) -> nn.Module:
    """A torchvision video ResNet for ``[B, 3, D, S, S]`` (sequences as the colour channels)."""
    if in_channels != 3:
        raise ValueError(f"{name} takes 3 input channels, got {in_channels}")
    return VIDEO_NETS[name](weights=None, num_classes=num_classes)
