from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from metastases.errors import ParamsError
from metastases.params import VolumeParams, from_mapping
from metastases.volumes import (
    BRAIN_DEPTH_MM,
    affine_inverse,
    apply_affine,
    brain_mask,
    depth_positions,
    normalise,
    patient_tensor,
    sample,
    study_depth_indices,
)


def test_seed_rule_10_slices_repeats_only_the_two_middle_slices():
    indices = study_depth_indices(10)
    assert len(indices) == 20
    assert list(indices[:4]) == [0, 1, 2, 3] and list(indices[-4:]) == [6, 7, 8, 9]
    assert np.all(np.diff(indices) >= 0), "the head must stay in order"
    counts = np.bincount(indices, minlength=10)
    assert set(np.flatnonzero(counts > 1)) == {4, 5}
    assert counts.sum() == 20 and np.all(counts >= 1)


def test_seed_rule_20_slices_is_identity():
    assert list(study_depth_indices(20)) == list(range(20))


def test_seed_rule_30_slices_is_centre_crop():
    assert list(study_depth_indices(30)) == list(range(5, 25))


def test_seed_rule_50_slices_takes_thirds_and_middle():
    indices = list(study_depth_indices(50))
    # 50 // 3 = 16, 50 // 2 = 25, 2 * 50 // 3 = 33
    assert indices[:6] == [16, 17, 18, 19, 20, 21]
    assert indices[6:14] == [21, 22, 23, 24, 25, 26, 27, 28]
    assert indices[14:] == [28, 29, 30, 31, 32, 33]


@pytest.mark.parametrize("n_slices", [1, 7, 19, 20, 33, 40, 41, 48, 90])
def test_seed_rule_always_gives_20_valid_indices(n_slices):
    indices = study_depth_indices(n_slices)
    assert len(indices) == 20 and indices.min() >= 0 and indices.max() < n_slices


def test_resample_mode_spans_the_whole_head_linearly():
    positions = depth_positions(40, VolumeParams(image_size=128, depth_mode="resample"))
    assert len(positions) == 20 and positions[0] == 0 and positions[-1] == 39
    assert np.allclose(np.diff(positions), 39 / 19)


def test_zscore_normalisation_is_per_volume_and_scale_free():
    rng = np.random.default_rng(1)
    volume = rng.gamma(2.0, 300.0, size=(10, 32, 32)).astype(np.float32)
    a = normalise(volume, "zscore", (0.5, 99.5))
    b = normalise(volume * 7.0 + 100.0, "zscore", (0.5, 99.5))
    assert a.dtype == np.float32
    assert abs(a.mean()) < 1e-4 and abs(a.std() - 1) < 1e-3
    assert np.allclose(a, b, atol=1e-4), "an affine intensity change must not change the normalised volume"
    m = normalise(volume, "minmax", (0.0, 100.0))
    assert m.min() == 0.0 and m.max() == 1.0


def ball_image(path: Path, shape, spacing, centre_world, origin) -> Path:
    """A NIfTI volume (x and y flipped, as DICOM stores them) with a bright 12 mm ball at ``centre_world``."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = origin
    voxels = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = voxels @ affine[:3, :3].T + affine[:3, 3]
    data = 100.0 + 900.0 * (np.linalg.norm(world - centre_world, axis=-1) < 6.0)
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return path


def test_the_three_sequences_are_sampled_on_one_grid(tmp_path):
    centre = np.array([30.0, 40.0, 12.0])  # RAS: right, anterior, above the middle
    paths = {
        # different matrices, slice thicknesses and origins, like three real series of one visit
        "flair": ball_image(tmp_path / "f.nii.gz", (64, 64, 30), (3.75, 3.75, 4.0), centre, (120, 120, -60)),
        "t2": ball_image(tmp_path / "t.nii.gz", (96, 96, 24), (2.5, 2.5, 5.0), centre, (119, 121, -58)),
        "t1c": ball_image(tmp_path / "c.nii.gz", (80, 80, 36), (3.0, 3.0, 3.5), centre, (118, 119, -61)),
    }
    params = VolumeParams(image_size=64, depth_mode="resample", clip_percentiles=(0.0, 100.0))
    tensor = patient_tensor(paths, params)
    assert tensor.shape == (3, 20, 64, 64) and tensor.dtype == np.float32
    peaks = [np.unravel_index(np.argmax(channel), channel.shape) for channel in tensor]
    for peak in peaks[:2]:
        assert np.abs(np.subtract(peak, peaks[2])).max() <= 1, f"sequences misaligned: {peaks}"
    k, row, column = peaks[2]
    assert k > 10, "the ball is above the middle"
    assert row < 32 and column < 32, "anterior at the top, the patient's right on the image's left"


def test_512_output_from_a_256_reference(tmp_path):
    centre = np.zeros(3)
    paths = {
        s: ball_image(tmp_path / f"{s}.nii.gz", (32, 32, 12), (7.5, 7.5, 5.0), centre, (120, 120, -30))
        for s in ("flair", "t2", "t1c")
    }
    tensor = patient_tensor(paths, VolumeParams(image_size=512))
    assert tensor.shape == (3, 20, 512, 512) and np.isfinite(tensor).all()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"size": 16}, "size"),
        ({"image_size": 64, "depth_mode": "nearest"}, "depth_mode"),
        ({"image_size": 64, "depth_mode": "seed"}, "depth_mode: 'seed' is now called 'study'"),
        ({"colour": 1}, "unknown"),
    ],
)
def test_bad_volume_params_fail_with_one_clear_line(values, message):
    with pytest.raises(ParamsError, match=message) as excinfo:
        from_mapping(VolumeParams, "slice_2d", values)
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize("tilt", [-5.3, -1.1, 0.0, 2.9, 6.0])
def test_points_on_the_first_and_last_slice_are_sampled(tilt):
    """An oblique stack's affine maps its own voxel centres to world and back only to ~1e-14: the last
    slice then lay outside the volume for map_coordinates and read 0 (whole zero slices in the arrays)."""
    angle = np.deg2rad(tilt)
    affine = np.eye(4)
    affine[:3, 0] = (-0.9, 0.0, 0.0)
    affine[:3, 1] = (0.0, -0.9 * np.cos(angle), -0.9 * np.sin(angle))
    affine[:3, 2] = (0.0, -5.5 * np.sin(angle), 5.5 * np.cos(angle))
    affine[:3, 3] = (110.3, 105.7, -60.2)
    image = nib.Nifti1Image(np.ones((40, 40, 12), np.float32), affine)
    k, j, i = np.meshgrid(np.linspace(0, 11, 5), np.arange(40.0), np.arange(40.0), indexing="ij")
    world = nib.affines.apply_affine(affine, np.stack([i, j, k], axis=-1))
    assert np.all(sample(image, world) == 1.0)


def test_affine_helpers_match_numpy():
    rng = np.random.default_rng(3)
    affine = np.eye(4)
    affine[:3] = rng.normal(size=(3, 4)) * [1, 1, 1, 50]
    points = rng.normal(size=(5, 7, 3)) * 40
    assert np.allclose(apply_affine(affine, points), nib.affines.apply_affine(affine, points))
    assert np.allclose(affine_inverse(affine), np.linalg.inv(affine))


def test_brain_normalisation_leaves_out_the_scalp_and_scales_on_the_brain_only() -> None:
    # a head of radius 40 px (1 mm pixels): brain (value 1 + noise), then a 5 px scalp ring 4x as bright
    y, x = np.mgrid[-50:50, -50:50]
    radius = np.hypot(x, y)
    rng = np.random.default_rng(0)
    plane = np.where(radius < 35, 1.0 + 0.1 * rng.standard_normal(radius.shape), 0.0)
    plane = np.where((radius >= 35) & (radius < 40), 4.0, plane).astype(np.float32)
    volume = np.stack([plane] * 3)
    mask = brain_mask([volume, volume, volume], pixel_mm=1.0)
    assert not mask[:, radius >= 35].any()  # the whole scalp ring is out
    assert mask[:, radius < 40 - BRAIN_DEPTH_MM - 1].all()  # the brain deeper than the margin is in
    out = normalise(volume, "zscore_brain", (0.0, 100.0), mask)
    assert out[mask].mean() == pytest.approx(0.0, abs=1e-5) and out[mask].std() == pytest.approx(
        1.0, abs=1e-4
    )
    assert (out[~mask] == 0).all()
    # plain z-scores take their scale from air and scalp: the brain's own contrast is squeezed
    assert normalise(volume, "zscore", (0.0, 100.0))[mask].std() < 0.2
