"""The data example picture: a few patients per class, one slice per sequence, as the network sees it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from metastases.atomic import atomic_path
from metastases.params import CLASSES, SEQUENCES

SEQUENCE_TITLES = {"flair": "FLAIR", "t2": "T2", "t1c": "T1 + contrast"}


def sample_montage(array_dir: Path, index: pd.DataFrame, out_png: Path, per_class: int = 2) -> None:
    """Draw ``per_class`` patients per class (first by key) x the three sequences, at the middle slice.

    Reads 2D-layout arrays (``[3 * depth, S, S]``).
    """
    chosen = pd.concat([index[index["label"] == label].head(per_class) for label in range(len(CLASSES))])
    fig, axes = plt.subplots(len(chosen), len(SEQUENCES), figsize=(2.6 * len(SEQUENCES), 2.6 * len(chosen)))
    axes = np.atleast_2d(axes)
    for row, patient in enumerate(chosen.itertuples()):
        array = np.load(array_dir / f"{patient.patient}.npy", mmap_mode="r")
        depth = array.shape[0] // len(SEQUENCES)
        for column, sequence in enumerate(SEQUENCES):
            ax = axes[row, column]
            ax.imshow(np.asarray(array[column * depth + depth // 2], dtype=np.float32), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(SEQUENCE_TITLES[sequence])
            if column == 0:
                ax.set_ylabel(f"{patient.patient}\n{CLASSES[patient.label]}")
    fig.suptitle("Middle slice of each sequence (normalised, as fed to the networks)")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
