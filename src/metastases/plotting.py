"""Matplotlib pictures of training curves, cross-validation curves, ROC and confusion matrices (PNG).

Each function takes plain data frames (the same ones written as DVC plot files) and writes one PNG
atomically. The non-interactive Agg backend is used, so no display is needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from metastases.atomic import atomic_path
from metastases.params import CLASSES

DPI = 110


def save_figure(figure: Figure, path: Path) -> None:
    """Lay out, write ``path`` atomically as PNG, close."""
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    plt.close(figure)


def plot_cv_loss(table: pd.DataFrame, title: str, path: Path) -> None:
    """Per-fold (thin) and mean (thick) train and validation loss per epoch, and the mean validation AUC.

    ``table``: epoch, train_fold<k>, val_fold<k> for each fold k, train_loss, validation_loss,
    validation_auc (means over the folds).
    The dashed line is chance for balanced classes (ln 2): a training curve that never leaves it is a
    model that did not learn.
    """
    figure, (ax, ax_auc) = plt.subplots(1, 2, figsize=(11, 4))
    for column in table.columns:
        if column.startswith(("train_fold", "val_fold")):
            colour = "tab:blue" if column.startswith("train") else "tab:orange"
            ax.plot(table["epoch"], table[column], color=colour, alpha=0.3, lw=1)
    ax.plot(table["epoch"], table["train_loss"], color="tab:blue", lw=2.5, label="train, mean over folds")
    ax.plot(
        table["epoch"],
        table["validation_loss"],
        color="tab:orange",
        lw=2.5,
        label="validation, mean over folds",
    )
    ax.axhline(math.log(2), color="grey", ls="--", lw=1, label="chance (ln 2)")
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", title=f"{title}: loss per fold (thin) and mean")
    ax.legend()
    if "validation_auc" in table:
        ax_auc.plot(table["epoch"], table["validation_auc"], color="tab:purple", lw=2, label="validation AUC")
    ax_auc.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
    ax_auc.set(xlabel="epoch", ylabel="AUC (mean over folds)", ylim=(0, 1.02), title=f"{title}: validation")
    ax_auc.legend(loc="lower right")
    save_figure(figure, path)


def plot_roc(
    curves: dict[str, tuple[pd.DataFrame, float, tuple[float, float]]],
    path: Path,
    *,
    title: str = "ROC on held-out test patients (95% bootstrap CI)",
) -> None:
    """ROC curves on one axes; ``curves`` maps a label to (fpr/tpr table, AUC, 95% CI)."""
    figure, ax = plt.subplots(figsize=(5.5, 5))
    for name, (table, value, (low, high)) in curves.items():
        ax.step(
            table["fpr"],
            table["tpr"],
            where="post",
            lw=2,
            label=f"{name}: AUC {value:.3f} [{low:.3f}, {high:.3f}]",
        )
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance")
    ax.set(
        xlabel="false positive rate (1 - specificity)",
        ylabel="true positive rate (sensitivity)",
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        title=title,
    )
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(figure, path)


def plot_confusion(matrices: dict[str, pd.DataFrame], path: Path) -> None:
    """One confusion matrix per model; each frame has one row per patient: actual, predicted (0/1)."""
    figure, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 4), squeeze=False)
    for ax, (name, table) in zip(axes[0], matrices.items(), strict=True):
        counts = np.zeros((2, 2), dtype=int)
        np.add.at(counts, (table["actual"].to_numpy(int), table["predicted"].to_numpy(int)), 1)
        ax.imshow(counts, cmap="Blues", vmin=0)
        for (row, col), value in np.ndenumerate(counts):
            colour = "white" if value > counts.max() / 2 else "black"
            ax.text(col, row, str(value), ha="center", va="center", fontsize=14, color=colour)
        ax.set_xticks([0, 1], CLASSES)
        ax.set_yticks([0, 1], CLASSES)
        ax.set(xlabel="predicted", ylabel="actual", title=name)
    save_figure(figure, path)
