"""A patient's three NIfTI volumes -> one ``[3, depth, S, S]`` tensor: orient, fit depth, resize, scale."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from metastases.params import SEQUENCES, VolumeParams

SEED_DEPTH = 20


def seed_depth_indices(n_slices: int) -> np.ndarray:
    """Slice indices that bring ``n_slices`` to 20 by the original study's rule.

    Fewer than 20: copies of the two middle slices are inserted in the middle until there are 20.
    20 to 40: the centre 20. Over 40: 6 slices starting at the first third, 8 around the middle and
    6 ending at the last third (these windows may overlap for 41-47 slices, as in the original).
    """
    if n_slices < 1:
        raise ValueError("a volume needs at least one slice")
    if n_slices < SEED_DEPTH:
        indices = list(range(n_slices))
        while len(indices) < SEED_DEPTH:
            middle = len(indices) // 2
            pair = indices[max(middle - 1, 0) : middle + 1]
            indices[middle:middle] = pair[: SEED_DEPTH - len(indices)]
        return np.asarray(indices)
    if n_slices <= 40:
        start = (n_slices - SEED_DEPTH) // 2
        return np.arange(start, start + SEED_DEPTH)
    first, middle, last = n_slices // 3, n_slices // 2, (2 * n_slices) // 3
    return np.concatenate(
        [np.arange(first, first + 6), np.arange(middle - 4, middle + 4), np.arange(last - 5, last + 1)]
    )


def resample_depth(volume: np.ndarray, depth: int) -> np.ndarray:
    """Linearly interpolate ``[n, H, W]`` to ``depth`` slices spread evenly from the first to the last."""
    n_slices = volume.shape[0]
    positions = np.linspace(0, n_slices - 1, depth)
    below = np.floor(positions).astype(int)
    above = np.minimum(below + 1, n_slices - 1)
    weight = (positions - below)[:, None, None].astype(np.float32)
    return (1 - weight) * volume[below] + weight * volume[above]


def fit_depth(volume: np.ndarray, params: VolumeParams) -> np.ndarray:
    """``[n, H, W]`` -> ``[params.depth, H, W]`` by the seed rule or by even resampling."""
    if params.depth_mode == "seed":
        return volume[seed_depth_indices(volume.shape[0])]
    return resample_depth(volume, params.depth)


def resize_slices(volume: np.ndarray, size: int) -> np.ndarray:
    """Resize every slice of ``[D, H, W]`` to ``[D, size, size]`` (bilinear, antialiased when shrinking)."""
    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[:, None]
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized[:, 0].numpy()


def normalise(volume: np.ndarray, mode: str, clip_percentiles: tuple[float, float]) -> np.ndarray:
    """Per-volume intensity normalisation: MR intensities have no absolute unit, so never a fixed window.

    The volume is clipped to its own percentiles first, so a few hot voxels cannot dominate the scale.
    """
    volume = volume.astype(np.float32)
    if mode == "none":
        return volume
    low, high = np.percentile(volume, clip_percentiles)
    volume = np.clip(volume, low, high)
    if mode == "minmax":
        return (volume - low) / max(float(high - low), 1e-6)
    return (volume - volume.mean()) / max(float(volume.std()), 1e-6)


def load_axial_stack(path: str | Path) -> np.ndarray:
    """Read a NIfTI volume as ``[slices, rows, columns]``, inferior to superior, displayed head-up.

    The volume is brought to the closest RAS orientation, then each axial slice is laid out as a
    radiologist views it: anterior at the top, the patient's right on the image's left.
    """
    image = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(image.dataobj, dtype=np.float32)  # [i: right, j: anterior, k: superior]
    return np.ascontiguousarray(np.transpose(data[::-1, ::-1, :], (2, 1, 0)))


def patient_tensor(volume_paths: Mapping[str, str | Path], params: VolumeParams) -> np.ndarray:
    """Build the ``[3, depth, size, size]`` float32 tensor of one patient (channels FLAIR, T2, T1+C)."""
    channels = []
    for sequence in SEQUENCES:
        stack = resize_slices(fit_depth(load_axial_stack(volume_paths[sequence]), params), params.size)
        # normalised last: the statistics are those of what the network sees, and 10-50x cheaper
        channels.append(normalise(stack, params.normalise, params.clip_percentiles))
    return np.stack(channels)
