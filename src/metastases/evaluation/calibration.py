"""Does a probability of 0.8 mean 80 %? Brier score, reliability curves, and what Platt scaling would do.

Platt scaling (a logistic fit of the label on the score's logit) is fitted on the out-of-fold
predictions only, never on the test split; its effect on the held-out Brier score is reported so a user
can see whether calibrating is worth it. Ranking (and so AUC) is unchanged by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss

from metastases.plotting import save_figure

EPS = 1e-6


def brier(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean squared difference between the probability and the outcome (0 perfect; 0.25 a constant 0.5)."""
    return float(brier_score_loss(np.asarray(labels, int), np.clip(np.asarray(scores, float), 0.0, 1.0)))


def _logit(scores: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(scores, np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))[:, None]


@dataclass(frozen=True)
class PlattScaling:
    """``p' = sigmoid(a * logit(p) + b)``, fitted on out-of-fold predictions."""

    slope: float
    intercept: float

    @classmethod
    def fit(cls, labels: np.ndarray, scores: np.ndarray) -> PlattScaling:
        model = LogisticRegression(C=1e6, solver="lbfgs").fit(_logit(scores), np.asarray(labels, int))
        return cls(float(model.coef_[0, 0]), float(model.intercept_[0]))

    def apply(self, scores: np.ndarray) -> np.ndarray:
        z = self.slope * _logit(scores)[:, 0] + self.intercept
        return 1.0 / (1.0 + np.exp(-z))


def reliability(labels: np.ndarray, scores: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean predicted probability, observed share of metastases) per bin of equal patient counts."""
    fraction, mean_predicted = calibration_curve(
        np.asarray(labels, int), np.clip(np.asarray(scores, float), 0, 1), n_bins=bins, strategy="quantile"
    )
    return mean_predicted, fraction


def plot_calibration(
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], bins: int, path: Path
) -> None:
    """Reliability diagrams side by side: ``panels`` maps a panel title (out-of-fold, held-out) to
    ``{curve label: (labels, scores)}``; a label ``"<model>, <variant>"`` shares its model's colour."""
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    models = sorted({name.split(",")[0] for curves in panels.values() for name in curves})
    colours = {model: f"C{k}" for k, model in enumerate(models)}  # one colour per model in every panel
    for ax, (title, curves) in zip(axes[0], panels.items(), strict=True):
        for name, (labels, scores) in curves.items():
            x, y = reliability(labels, scores, bins)
            style = "--" if "Platt" in name else "-"
            ax.plot(x, y, style, color=colours[name.split(",")[0]], marker="o", lw=1.8,
                    label=f"{name}: Brier {brier(labels, scores):.3f}")  # fmt: skip
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfectly calibrated")
        ax.set(
            xlabel="predicted probability of metastases (bin mean)",
            ylabel="observed share with metastases",
            xlim=(-0.02, 1.02),
            ylim=(-0.02, 1.02),
            title=f"{title} ({bins} bins of equal size)",
        )
        ax.set_aspect("equal")
        ax.legend(loc="upper left", fontsize=7)
    save_figure(figure, path)
