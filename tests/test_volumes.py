import nibabel as nib
import numpy as np
import pytest

from metastases.errors import ParamsError
from metastases.params import VolumeParams, from_mapping
from metastases.volumes import (
    fit_depth,
    load_axial_stack,
    normalise,
    resample_depth,
    resize_slices,
    seed_depth_indices,
)


def test_seed_rule_10_slices_repeats_only_the_two_middle_slices():
    indices = seed_depth_indices(10)
    assert len(indices) == 20
    assert list(indices[:4]) == [0, 1, 2, 3] and list(indices[-4:]) == [6, 7, 8, 9]
    assert np.all(np.diff(indices) >= 0), "the head must stay in order"
    counts = np.bincount(indices, minlength=10)
    assert set(np.flatnonzero(counts > 1)) == {4, 5}
    assert counts.sum() == 20 and np.all(counts >= 1)


def test_seed_rule_20_slices_is_identity():
    assert list(seed_depth_indices(20)) == list(range(20))


def test_seed_rule_30_slices_is_centre_crop():
    assert list(seed_depth_indices(30)) == list(range(5, 25))


def test_seed_rule_50_slices_takes_thirds_and_middle():
    indices = list(seed_depth_indices(50))
    # 50 // 3 = 16, 50 // 2 = 25, 2 * 50 // 3 = 33
    assert indices[:6] == [16, 17, 18, 19, 20, 21]
    assert indices[6:14] == [21, 22, 23, 24, 25, 26, 27, 28]
    assert indices[14:] == [28, 29, 30, 31, 32, 33]


@pytest.mark.parametrize("n_slices", [1, 7, 19, 20, 33, 40, 41, 48, 90])
def test_seed_rule_always_gives_20_valid_indices(n_slices):
    indices = seed_depth_indices(n_slices)
    assert len(indices) == 20 and indices.min() >= 0 and indices.max() < n_slices


def test_resample_mode_spans_the_whole_head_linearly():
    volume = np.arange(40, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32)
    resampled = resample_depth(volume, 20)
    assert resampled.shape == (20, 4, 4)
    assert resampled[0, 0, 0] == 0 and resampled[-1, 0, 0] == 39
    assert np.allclose(np.diff(resampled[:, 0, 0]), 39 / 19)


def test_fit_depth_follows_the_mode():
    volume = np.random.default_rng(0).random((30, 8, 8)).astype(np.float32)
    seed = fit_depth(volume, VolumeParams(depth_mode="seed"))
    assert np.array_equal(seed, volume[5:25])
    assert fit_depth(volume, VolumeParams(depth_mode="resample")).shape == (20, 8, 8)


def test_resize_to_512_and_down():
    volume = np.ones((3, 256, 256), np.float32)
    assert resize_slices(volume, 512).shape == (3, 512, 512)
    assert np.allclose(resize_slices(volume, 64), 1.0)


def test_zscore_normalisation_is_per_volume_and_scale_free():
    rng = np.random.default_rng(1)
    volume = rng.gamma(2.0, 300.0, size=(10, 32, 32)).astype(np.float32)
    a = normalise(volume, "zscore", (0.5, 99.5))
    b = normalise(volume * 7.0 + 100.0, "zscore", (0.5, 99.5))
    assert abs(a.mean()) < 1e-4 and abs(a.std() - 1) < 1e-3
    assert np.allclose(a, b, atol=1e-4), "an affine intensity change must not change the normalised volume"
    m = normalise(volume, "minmax", (0.0, 100.0))
    assert m.min() == 0.0 and m.max() == 1.0


def test_loaded_slices_show_anterior_up_and_patient_right_on_the_left(tmp_path):
    # A marker in the right-anterior-superior corner, stored in an LPS-like (flipped x and y) voxel order.
    data = np.zeros((8, 6, 4), np.float32)
    data[0, 0, 3] = 1.0  # voxel (0, 0): most right (x flipped) and most anterior (y flipped)
    affine = np.diag([-1.0, -1.0, 5.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "v.nii.gz")
    stack = load_axial_stack(tmp_path / "v.nii.gz")
    assert stack.shape == (4, 6, 8)  # slices, rows (anterior->posterior), columns (right->left)
    assert stack[3, 0, 0] == 1.0 and stack.sum() == 1.0


@pytest.mark.parametrize(
    ("values", "message"),
    [({"size": 16}, "size"), ({"depth_mode": "nearest"}, "depth_mode"), ({"colour": 1}, "unknown")],
)
def test_bad_volume_params_fail_with_one_clear_line(values, message):
    with pytest.raises(ParamsError, match=message) as excinfo:
        from_mapping(VolumeParams, "slice_2d", values)
    assert "\n" not in str(excinfo.value)
