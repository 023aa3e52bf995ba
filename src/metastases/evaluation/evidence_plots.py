"""Pictures of where the models looked: one page per held-out patient and one montage of them all.

Each panel shows a sequence of the model's own input array at the slice of its highest evidence, the
evidence as a translucent heat map (relative to the patient's own strongest evidence: from its median,
transparent, to its maximum, bright), a cross at the peak, and, when lesion truth exists, a green circle
for each true metastasis and a dashed cyan one for each mimic in that slice. Whether the evidence was
strong enough is the probability printed beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.patches import Circle

from metastases.evaluation.evidence import Evidence, lesions_in_view
from metastases.params import CLASSES, SEQUENCES
from metastases.plotting import save_figure
from metastases.volumes import GridGeometry

SEQUENCE_NAMES = {"flair": "FLAIR", "t2": "T2", "t1c": "T1+C"}
OUTCOMES: tuple[str, ...] = ("true positive", "false negative", "false positive", "true negative")


@dataclass(frozen=True)
class ModelView:
    """One model's view of one patient: its input array, evidence, probability and decision."""

    title: str
    """``3D cnn3d``"""
    array: np.ndarray
    """``[60, S, S]`` or ``[3, D, S, S]``"""
    evidence: Evidence
    probability: float
    threshold: float
    label: int | None
    """1 metastases, 0 normal, None for a new study (no label)."""
    geometry: GridGeometry | None

    def image(self, sequence: int, slice_index: int) -> np.ndarray:
        if self.array.ndim == 3:  # 2D layout: channel = sequence * depth + slice
            depth = self.array.shape[0] // len(SEQUENCES)
            return np.asarray(self.array[sequence * depth + slice_index], np.float32)
        return np.asarray(self.array[sequence, slice_index], np.float32)

    @property
    def outcome(self) -> str:
        predicted = self.probability >= self.threshold
        if self.label is None:
            return f"decision: {CLASSES[int(predicted)]}"
        if self.label == 1:
            return OUTCOMES[0] if predicted else OUTCOMES[1]
        return OUTCOMES[2] if predicted else OUTCOMES[3]


def _relative(heat: np.ndarray, slice_index: int) -> np.ndarray:
    """The slice's evidence scaled from the volume's median (0) to its maximum (1)."""
    low, high = float(np.median(heat)), float(heat.max())
    return np.clip((heat[slice_index] - low) / max(high - low, 1e-6), 0.0, 1.0)


def _panel(ax: Axes, view: ModelView, sequence: int, lesions: pd.DataFrame | None, patient: str) -> None:
    slice_index = view.evidence.peak[0]
    image = view.image(sequence, slice_index)
    low, high = np.percentile(image, [1, 99.5])
    ax.imshow(image, cmap="gray", vmin=low, vmax=max(high, low + 1e-3))
    heat = _relative(view.evidence.heat, slice_index)
    overlay = plt.get_cmap("inferno")(heat)
    overlay[..., 3] = 0.6 * heat**3  # transparent away from the strongest evidence
    ax.imshow(overlay)
    _, centre_row, centre_column = view.evidence.centre
    ax.plot([centre_column], [centre_row], marker="+", color="cyan", markersize=12, mew=2)
    if lesions is not None and view.geometry is not None:
        for r, c, radius, kind in lesions_in_view(view.geometry, lesions, patient, slice_index):
            style = (
                {"edgecolor": "lime", "ls": "-"}
                if kind == "metastasis"
                else {"edgecolor": "cyan", "ls": "--"}
            )
            ax.add_patch(Circle((c, r), radius, fill=False, lw=1.2, **style))
    ax.set_xticks([])
    ax.set_yticks([])


def plot_patient_evidence(
    patient: str, views: list[ModelView], lesions: pd.DataFrame | None, path: Path
) -> None:
    """One row per model: FLAIR, T2 and T1+C at the slice of that model's highest evidence."""
    figure, axes = plt.subplots(len(views), 3, figsize=(9, 3.3 * len(views)), squeeze=False)
    for row_axes, view in zip(axes, views, strict=True):
        for sequence, ax in enumerate(row_axes):
            _panel(ax, view, sequence, lesions, patient)
            ax.set_title(
                f"{SEQUENCE_NAMES[SEQUENCES[sequence]]}, slice {view.evidence.peak[0] + 1}", fontsize=9
            )
        row_axes[0].set_ylabel(
            f"{view.title}\np(metastases) {view.probability:.2f}\n{view.outcome}", fontsize=9
        )
    label = views[0].label if views else None
    known = f" (label: {CLASSES[label]})" if label is not None else ""
    figure.suptitle(f"{patient}{known}: where each model found its evidence (+)", fontsize=11)
    save_figure(figure, path)


def plot_evidence_montage(
    rows: dict[str, list[tuple[str, ModelView]]],
    lesions: pd.DataFrame | None,
    path: Path,
    *,
    title: str = "Held-out patients: T1+C at each model's strongest evidence (+); TP/FN/FP/TN at the CV "
    "threshold",
) -> None:
    """One row of T1+C tiles per model, grouped true positives, false negatives, false positives, true
    negatives (decision at the cross-validation threshold); no rows: a picture saying ``title``."""
    if not rows:
        figure, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, title, ha="center", va="center", fontsize=11)
        save_figure(figure, path)
        return
    columns = max((len(v) for v in rows.values()), default=1)
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns, 2.0 * len(rows) + 0.4),
                                squeeze=False)  # fmt: skip
    t1c = SEQUENCES.index("t1c")
    for row_axes, (model, items) in zip(axes, rows.items(), strict=True):
        ordered = sorted(items, key=lambda item: (OUTCOMES.index(item[1].outcome), -item[1].probability))
        for ax, (patient, view) in zip(row_axes, ordered, strict=False):
            _panel(ax, view, t1c, lesions, patient)
            short = "".join(word[0] for word in view.outcome.upper().split())
            ax.set_title(f"{short} {view.probability:.2f}\n{patient[:10]}", fontsize=7)
        for ax in row_axes[len(ordered) :]:
            ax.axis("off")
        row_axes[0].set_ylabel(model, fontsize=9)
    figure.suptitle(title, fontsize=10)
    save_figure(figure, path)
