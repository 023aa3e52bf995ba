"""Small, learnable stand-ins for the processed arrays and split (the contract of slice-2d/stack-3d/split).

Each patient is a noisy ellipse ("head") in three sequences x 20 slices; metastases patients get a few
bright blobs in FLAIR and T1+C. Written as float16 ``.npy`` files with ``index.csv`` and ``splits.csv``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split


def patient_volume(
    rng: np.random.Generator,
    label: int,
    size: int,
    depth: int = 20,
    contrast: float = 1.5,
    lesion_slices: int = 5,
) -> np.ndarray:
    """``[3, depth, size, size]`` float32, z-scored per sequence; a lesion spans ``lesion_slices`` slices."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    head = ((yy / 0.42) ** 2 + (xx / 0.36) ** 2 < 1).astype(np.float32)
    volume = np.repeat(head[None, None], 3, axis=0).repeat(depth, axis=1) * rng.uniform(
        0.8, 1.2, (3, 1, 1, 1)
    )
    volume += rng.normal(0, 0.3, volume.shape)
    if label == 1:
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(-0.25, 0.25, 2)
            z = int(rng.integers(3, depth - 3))
            radius = rng.uniform(0.04, 0.08)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2)).astype(np.float32)
            below = (lesion_slices - 1) // 2
            for sequence in (0, 2):
                volume[sequence, z - below : z - below + lesion_slices] += contrast * blob
    flat = volume.reshape(3, -1)
    flat -= flat.mean(axis=1, keepdims=True)
    flat /= flat.std(axis=1, keepdims=True)
    return volume.astype(np.float32)


def write_cohort(
    root: Path,
    patients: int = 20,
    size_2d: int = 32,
    size_3d: int = 32,
    folds: int = 3,
    test_fraction: float = 0.25,
    seed: int = 0,
    contrast: float = 1.5,
    lesion_slices: int = 5,
) -> dict[str, Path]:
    """Write ``root/processed/{2d,3d}/*.npy + index.csv`` and ``root/splits.csv``; returns their paths."""
    rng = np.random.default_rng(seed)
    labels = np.array([i % 2 for i in range(patients)])
    names = [f"{'mts' if y else 'norma'}-{i:03d}" for i, y in enumerate(labels)]
    dirs = {"2d": root / "processed" / "2d", "3d": root / "processed" / "3d"}
    for directory in dirs.values():
        directory.mkdir(parents=True, exist_ok=True)
    for name, label in zip(names, labels, strict=True):
        patient_seed = int(rng.integers(2**31))
        shape = {"contrast": contrast, "lesion_slices": lesion_slices}
        vol2 = patient_volume(np.random.default_rng(patient_seed), int(label), size_2d, **shape)
        vol3 = patient_volume(np.random.default_rng(patient_seed), int(label), size_3d, **shape)
        np.save(dirs["2d"] / f"{name}.npy", vol2.reshape(-1, size_2d, size_2d).astype(np.float16))
        np.save(dirs["3d"] / f"{name}.npy", vol3.astype(np.float16))
    index = pd.DataFrame({"patient": names, "label": labels})
    for directory in dirs.values():
        index.to_csv(directory / "index.csv", index=False)
    train, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    train = train.sort_values("patient").reset_index(drop=True)
    train["fold"] = -1
    for fold, (_, val) in enumerate(
        StratifiedKFold(folds, shuffle=True, random_state=seed).split(train, train["label"])
    ):
        train.loc[val, "fold"] = fold
    splits = pd.concat([train.assign(split="train"), test.assign(split="test", fold=-1)])
    splits = splits.sort_values("patient")[["patient", "label", "split", "fold"]]
    splits.to_csv(root / "splits.csv", index=False)
    return {"2d": dirs["2d"], "3d": dirs["3d"], "splits": root / "splits.csv"}
