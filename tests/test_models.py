"""Forward passes of every registered model on the shapes the pipeline feeds them."""

import pytest
import torch
from torch import nn

from metastases.errors import ParamsError
from metastases.models import MODELS, CompactCNN, build_model, model_dim
from metastases.models.lenet3d import SEED_KERNELS, scaled_kernel

SMALL_SHAPES = {"2d": (60, 64, 64), "3d": (3, 20, 32, 32)}


def _conv_kernels(model: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.kernel_size) for m in model.modules() if isinstance(m, nn.Conv3d)]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_maps_a_batch_to_two_logits(name: str) -> None:
    shape = SMALL_SHAPES[model_dim(name)]
    torch.manual_seed(0)
    model = build_model(name, shape).eval()
    with torch.no_grad():
        out = model(torch.randn(1, *shape))
    assert out.shape == (1, 2)
    assert torch.isfinite(out).all()


def test_alexnet2d_is_the_seed_network_at_512() -> None:
    model = build_model("alexnet2d", (60, 512, 512)).eval()
    first = model.features[0]
    assert (first.in_channels, first.out_channels, first.kernel_size, first.stride) == (
        60,
        64,
        (11, 11),
        (4, 4),
    )
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(9216, 4096), (4096, 4096), (4096, 2)]
    with torch.no_grad():
        assert model(torch.zeros(1, 60, 512, 512)).shape == (1, 2)


def test_lenet3d_is_the_seed_network_at_512() -> None:
    model = build_model("lenet3d", (3, 20, 512, 512)).eval()
    assert _conv_kernels(model) == [(2, 32, 32), (2, 16, 16), (2, 8, 8), (2, 4, 4)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (9216, 2000),
        (2000, 120),
        (120, 84),
        (84, 2),
    ]
    # forward at the full 512 x 512 plane; a depth of 5 (the least four depth-2 convolutions accept)
    # keeps the test to a second, and the flattened size follows from (depth, size) as shown above
    shallow = build_model("lenet3d", (3, 5, 512, 512)).eval()
    assert shallow.flat_features == 64 * 1 * 3 * 3
    with torch.no_grad():
        assert shallow(torch.zeros(1, 3, 5, 512, 512)).shape == (1, 2)


@pytest.mark.parametrize(("size", "kernels"), [(256, (16, 8, 4, 2)), (128, (8, 4, 2, 1)), (64, (4, 2, 1, 1))])
def test_lenet3d_scales_in_plane_kernels_below_512(size: int, kernels: tuple[int, ...]) -> None:
    assert tuple(scaled_kernel(k, size) for k in SEED_KERNELS) == kernels
    model = build_model("lenet3d", (3, 20, size, size)).eval()
    assert _conv_kernels(model) == [(2, k, k) for k in kernels]
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 20, size, size)).shape == (1, 2)


def test_compact_cnn_switches_between_2d_and_3d_convolutions() -> None:
    assert any(isinstance(m, nn.Conv2d) for m in CompactCNN(2, 60).modules())
    assert any(isinstance(m, nn.Conv3d) for m in CompactCNN(3, 3).modules())
    with pytest.raises(ValueError, match="spatial_dims"):
        CompactCNN(1, 3)


def test_registry_rejects_unknown_names_and_wrong_layouts() -> None:
    with pytest.raises(ParamsError, match="not one of"):
        build_model("vgg", (60, 64, 64))
    with pytest.raises(ParamsError, match="3d model"):
        build_model("cnn3d", (60, 64, 64))
