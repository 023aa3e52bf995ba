"""Model registry: ``build_model(name, input_shape)`` for every network params may name.

``input_shape`` is one sample's shape without the batch axis: ``(C, S, S)`` for 2D models,
``(C, D, S, S)`` for 3D models. Every model returns ``[B, 2]`` logits (0 normal, 1 metastases).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from metastases.errors import ParamsError
from metastases.models.alexnet2d import AlexNet2D
from metastases.models.compact import CompactCNN
from metastases.models.lenet3d import LeNet3D
from metastases.models.slice_mil import SliceMIL
from metastases.models.torchvision_nets import resnet18_2d, video_resnet
from metastases.models.volume_mil import VolumeMIL


@dataclass(frozen=True)
class ModelSpec:
    dim: str
    """``2d`` or ``3d``: which arrays the model reads."""
    build: Callable[[tuple[int, ...], int], nn.Module]
    description: str


def _alexnet(shape: tuple[int, ...], classes: int) -> nn.Module:
    return AlexNet2D(in_channels=shape[0], num_classes=classes)


def _lenet(shape: tuple[int, ...], classes: int) -> nn.Module:
    return LeNet3D(in_channels=shape[0], depth=shape[1], size=shape[-1], num_classes=classes)


def _compact(dims: int, pooling: str) -> Callable[[tuple[int, ...], int], nn.Module]:
    def build(shape: tuple[int, ...], classes: int) -> nn.Module:
        return CompactCNN(spatial_dims=dims, in_channels=shape[0], num_classes=classes, pooling=pooling)

    return build


def _slice_mil(shape: tuple[int, ...], classes: int) -> nn.Module:
    return SliceMIL(in_channels=shape[0], num_classes=classes)


def _volume_mil(shape: tuple[int, ...], classes: int) -> nn.Module:
    return VolumeMIL(in_channels=shape[0], num_classes=classes)


def _video(name: str) -> Callable[[tuple[int, ...], int], nn.Module]:
    def build(shape: tuple[int, ...], classes: int) -> nn.Module:
        return video_resnet(name, in_channels=shape[0], num_classes=classes)

    return build


MODELS: dict[str, ModelSpec] = {
    "alexnet2d": ModelSpec("2d", _alexnet, "the seed's AlexNet with 60 input channels (baseline)"),
    "lenet3d": ModelSpec("3d", _lenet, "the seed's LeNet-3D, kernels scaled below S=512 (baseline)"),
    "cnn2d": ModelSpec(
        "2d", _slice_mil, "multiple-instance slice CNN: shared encoder per slice, max over slices (default)"
    ),
    "cnn3d": ModelSpec(
        "3d", _volume_mil, "multiple-instance 3D CNN: shallow local detector, max over the volume (default)"
    ),
    "compact3d_max": ModelSpec("3d", _compact(3, "max"), "compact 4-stage 3D CNN, global max pooling"),
    "compact2d": ModelSpec(
        "2d", _compact(2, "avg"), "compact 4-stage 2D CNN on 60 channels, average pooling"
    ),
    "compact3d": ModelSpec("3d", _compact(3, "avg"), "compact 4-stage 3D CNN, average pooling"),
    "resnet18_2d": ModelSpec("2d", lambda s, c: resnet18_2d(s[0], c), "torchvision ResNet-18, 60-ch stem"),
    "r3d_18": ModelSpec("3d", _video("r3d_18"), "torchvision video ResNet r3d_18"),
    "mc3_18": ModelSpec("3d", _video("mc3_18"), "torchvision video ResNet mc3_18"),
    "r2plus1d_18": ModelSpec("3d", _video("r2plus1d_18"), "torchvision video ResNet r2plus1d_18"),
}


def model_dim(name: str) -> str:
    """``2d`` or ``3d`` for a registered model name; an unknown name is a one-line params error."""
    if name not in MODELS:
        raise ParamsError(f"model {name!r} is not one of {', '.join(MODELS)}")
    return MODELS[name].dim


def check_model(name: str, dim: str, section: str) -> None:
    """``section.model`` must name a registered ``dim`` model; else one line naming the key and choices."""
    if name not in MODELS:
        choices = ", ".join(n for n, spec in MODELS.items() if spec.dim == dim)
        raise ParamsError(f"{section}.model: {name!r} is not one of {choices}")
    if MODELS[name].dim != dim:
        raise ParamsError(
            f"{section}.model: {name!r} is a {MODELS[name].dim} model; {section} needs a {dim} model"
        )


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int = 2) -> nn.Module:
    """Build the named network for samples of ``input_shape`` (no batch axis), randomly initialised."""
    dim = model_dim(name)
    expected = 3 if dim == "2d" else 4
    if len(input_shape) != expected:
        raise ParamsError(
            f"model {name!r} is a {dim} model and needs {expected}-axis samples, "
            f"got shape {tuple(input_shape)}"
        )
    return MODELS[name].build(tuple(int(v) for v in input_shape), num_classes)


def has_evidence(model: nn.Module) -> bool:
    """Whether the model can say where it found the evidence (the multiple-instance models can)."""
    return callable(getattr(model, "evidence", None))


def evidence_map(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """``[B, depth, h, w]`` per-location evidence (metastasis-minus-normal logit) of a multiple-instance
    model, at its feature-map resolution; the location with the highest value is where it looked.

    Only models with an ``evidence`` method have one: in the others (the seed's AlexNet and LeNet, the
    compact and torchvision networks) the first layer mixes all slices (2D) or the global pooling averages
    every location, so a map would need Grad-CAM, which is not faithful to what drove the score.
    """
    if not has_evidence(model):
        raise ValueError(f"{type(model).__name__} has no per-location evidence")
    return model.evidence(batch)  # type: ignore[operator]


__all__ = [
    "MODELS",
    "AlexNet2D",
    "CompactCNN",
    "LeNet3D",
    "SliceMIL",
    "VolumeMIL",
    "build_model",
    "check_model",
    "evidence_map",
    "has_evidence",
    "model_dim",
]
