"""Forward passes of every registered model on the shapes the pipeline feeds them."""

import pytest
import torch
from torch import nn

from metastases.errors import ParamsError
from metastases.models import MODELS, CompactCNN, SliceMIL, VolumeMIL, build_model, model_dim
from metastases.models.lenet3d import STUDY_KERNELS, scaled_kernel

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
    assert tuple(scaled_kernel(k, size) for k in STUDY_KERNELS) == kernels
    model = build_model("lenet3d", (3, 20, size, size)).eval()
    assert _conv_kernels(model) == [(2, k, k) for k in kernels]
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 20, size, size)).shape == (1, 2)


def test_compact_cnn_switches_between_2d_and_3d_convolutions() -> None:
    assert any(isinstance(m, nn.Conv2d) for m in CompactCNN(2, 60).modules())
    assert any(isinstance(m, nn.Conv3d) for m in CompactCNN(3, 3).modules())
    with pytest.raises(ValueError, match="spatial_dims"):
        CompactCNN(1, 3)
    with pytest.raises(ValueError, match="pooling"):
        CompactCNN(3, 3, pooling="median")


@pytest.mark.parametrize(("pooling", "features"), [("avg", 128), ("max", 128), ("avgmax", 256)])
def test_compact_cnn_pooling_sets_the_classifier_width(pooling: str, features: int) -> None:
    model = CompactCNN(3, 3, pooling=pooling).eval()
    assert model.classifier[-1].in_features == features
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 32, 32)).shape == (2, 2)


def test_max_pooling_keeps_a_small_bright_spot_that_average_pooling_dilutes() -> None:
    # the same one-voxel spot in a small and in a large volume: the max-pooled features do not depend
    # on how much empty brain surrounds the spot, the average-pooled ones shrink with the volume
    torch.manual_seed(0)
    pooled: dict[str, list[torch.Tensor]] = {"avg": [], "max": []}
    for pooling, vectors in pooled.items():
        model = CompactCNN(3, 3, pooling=pooling).eval()
        for size in (32, 96):
            volume = torch.zeros(1, 3, 8, size, size)
            volume[0, 2, 4, 12, 12] = 10.0  # an enhancing voxel on T1+C
            with torch.no_grad():
                vectors.append(model.pool(model.features(volume)))
    small, large = pooled["max"]
    assert torch.allclose(small, large, atol=1e-5)
    small, large = pooled["avg"]
    assert not torch.allclose(small, large, atol=1e-3)


def test_slice_mil_makes_one_instance_per_slice_with_the_sequences_as_channels() -> None:
    # the 2D layout's channel is sequence * 20 + slice; fill each with 100 * sequence + slice
    sequences, depth = 3, 20
    channel_values = torch.tensor([100.0 * s + k for s in range(sequences) for k in range(depth)])
    x = channel_values[None, :, None, None].expand(2, -1, 4, 4)
    instances = SliceMIL(sequences * depth).instances(x)
    assert instances.shape == (2 * depth, sequences, 4, 4)
    for batch in range(2):
        for k in range(depth):
            values = instances[batch * depth + k, :, 0, 0].tolist()
            assert values == [float(k), 100.0 + k, 200.0 + k]


def test_slice_mil_with_context_adds_the_neighbouring_slices_repeating_the_ends() -> None:
    sequences, depth = 3, 20
    channel_values = torch.tensor([100.0 * s + k for s in range(sequences) for k in range(depth)])
    x = channel_values[None, :, None, None].expand(1, -1, 4, 4)
    instances = SliceMIL(sequences * depth, context=1).instances(x)
    assert instances.shape == (depth, 3 * sequences, 4, 4)
    for k in (0, 7, depth - 1):
        below, above = max(k - 1, 0), min(k + 1, depth - 1)
        expected = [100.0 * s + j for j in (below, k, above) for s in range(sequences)]
        assert instances[k, :, 0, 0].tolist() == expected


def test_slice_mil_ignores_the_order_of_slices() -> None:
    # max over slices: the patient's score does not depend on which slice holds the lesion
    torch.manual_seed(0)
    model = SliceMIL(60).eval()
    x = torch.randn(1, 60, 32, 32)
    order = torch.randperm(20)
    shuffled = x.reshape(1, 3, 20, 32, 32)[:, :, order].reshape(1, 60, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), model(shuffled), atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 3"):
        SliceMIL(61)


def test_default_models_are_the_slice_and_volume_mil_networks() -> None:
    assert isinstance(build_model("cnn2d", (60, 64, 64)), SliceMIL)
    assert isinstance(build_model("cnn3d", (3, 20, 32, 32)), VolumeMIL)
    assert build_model("compact3d_max", (3, 20, 32, 32)).pooling == "max"
    assert build_model("compact3d", (3, 20, 32, 32)).pooling == "avg"


@pytest.mark.parametrize("shift", [(0, 0, 0), (1, 0, 0), (0, 4, 0), (3, 8, 12)])
def test_volume_mil_scores_a_lesion_the_same_wherever_it_is(shift: tuple[int, int, int]) -> None:
    # a ring-enhancing blob on T1+C with FLAIR-bright surroundings, moved by whole output cells
    # (1 slice, 4 pixels: the encoder's strides) and kept away from the borders
    torch.manual_seed(0)
    model = VolumeMIL(3).eval()
    volume = torch.zeros(1, 3, 20, 64, 64)
    dz, dy, dx = shift
    volume[0, 0, 4 + dz : 9 + dz, 16 + dy : 26 + dy, 16 + dx : 26 + dx] = 2.0
    volume[0, 2, 5 + dz : 8 + dz, 18 + dy : 24 + dy, 18 + dx : 24 + dx] = 3.0
    volume[0, 2, 6 + dz, 20 + dy : 22 + dy, 20 + dx : 22 + dx] = -1.0
    reference = torch.zeros_like(volume)
    reference[0, 0, 4:9, 16:26, 16:26] = 2.0
    reference[0, 2, 5:8, 18:24, 18:24] = 3.0
    reference[0, 2, 6, 20:22, 20:22] = -1.0
    with torch.no_grad():
        moved, original, empty = model(volume), model(reference), model(torch.zeros_like(volume))
    assert torch.allclose(moved, original, atol=1e-5)
    assert not torch.allclose(original, empty, atol=1e-3)  # and the blob does change the score


def test_volume_mil_needs_one_stride_per_stage() -> None:
    with pytest.raises(ValueError, match="3 channel widths but 2 strides"):
        VolumeMIL(3, channels=(8, 16, 32), strides=((1, 2, 2), (1, 2, 2)))


def test_registry_rejects_unknown_names_and_wrong_dims() -> None:
    with pytest.raises(ParamsError, match="not one of"):
        build_model("vgg", (60, 64, 64))
    with pytest.raises(ParamsError, match="3d model"):
        build_model("cnn3d", (60, 64, 64))
