"""What the evaluate stage does: score the held-out test patients with the trained models.

Only test patients' arrays are read here; the decision threshold comes from the cross-validation
out-of-fold predictions (``metrics/cv.json``), never from the test set.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from metastases.arrays import load_geometry
from metastases.atomic import write_csv
from metastases.errors import UserError
from metastases.evaluation.calibration import PlattScaling, brier, plot_calibration
from metastases.evaluation.evidence import Evidence, array_depth, can_explain, explain_patients, pointing_game
from metastases.evaluation.evidence_plots import ModelView, plot_evidence_montage, plot_patient_evidence
from metastases.evaluation.metrics import auc, bootstrap_auc_ci, metrics_at, roc_table
from metastases.evaluation.model_card import ModelCardInputs, write_model_card
from metastases.lesion_truth import read_lesions
from metastases.metrics_file import write_metrics
from metastases.models import check_model
from metastases.params import CLASSES, EvaluateParams, TrainingParams
from metastases.plotting import plot_confusion, plot_roc
from metastases.training.checkpoint import Ensemble, load_ensemble
from metastases.training.dataset import PatientArrays
from metastases.training.inputs import load_cohort, require_both_classes
from metastases.training.loop import make_loader, predict
from metastases.training.runtime import configure_torch, resolve_device
from metastases.volumes import GridGeometry

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5

HEADLINE = ("2d.auc", "2d.localisation", "3d.auc", "3d.localisation")
"""What ``metrics/evaluate.json`` shows (``dvc metrics show``); the rest is in ``metrics/details/``."""


@dataclass(frozen=True)
class EvaluateOutputs:
    metrics: Path = Path("metrics/evaluate.json")
    predictions: Path = Path("metrics/predictions.csv")
    plots_dir: Path = Path("plots")
    """``roc/model_<dim>.csv`` (fpr, tpr, threshold), ``confusion/model_<dim>.csv`` (actual, predicted),
    ``roc.png``, ``confusion.png``, ``calibration.png``, ``evidence.png`` and ``evidence/<patient>.png``."""
    model_card: Path = Path("MODEL_CARD.md")


def read_cv_thresholds(path: Path, dims: list[str]) -> dict[str, float]:
    """The threshold cross-validation chose for each model (from out-of-fold predictions only)."""
    if not path.is_file():
        raise UserError(f"{path} not found: run cross-validate first (dvc repro cross-validate)")
    try:
        summary = json.loads(path.read_text())
        return {dim: float(summary[dim]["threshold"]) for dim in dims}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path} has no threshold for {', '.join(dims)}: rerun cross-validate") from None


def ensemble_scores(ensemble: Ensemble, loader: DataLoader, device: torch.device) -> np.ndarray:
    """Probability of metastases per sample: the mean of the ensemble members' probabilities."""
    return ensemble.mean_score(
        {member.fold: predict(member.model.to(device), loader, device)[0] for member in ensemble.members}
    )


def read_cv_predictions(path: Path) -> pd.DataFrame:
    """The out-of-fold predictions cross-validate wrote (patient, label, score, model, fold)."""
    if not path.is_file():
        raise UserError(f"{path} not found: run cross-validate first (dvc repro cross-validate)")
    table = pd.read_csv(path, dtype={"patient": str, "model": str})
    if not {"patient", "label", "score", "model"} <= set(table.columns):
        raise UserError(f"{path} is not an out-of-fold prediction table: rerun cross-validate")
    return table


@dataclass
class _Explained:
    """What the evidence pictures need of one model on the test patients."""

    title: str
    array_dir: Path
    evidence: dict[str, Evidence]
    scores: dict[str, float]
    labels: dict[str, int]
    threshold: float
    geometry: dict[str, GridGeometry]


def explain(
    ensemble: Ensemble, array_dir: Path, patients: pd.DataFrame, device: torch.device, batch_size: int
) -> dict[str, Evidence] | None:
    """Evidence maps of the ensemble's members (mean) for ``patients``; None for models without them."""
    models = [m.model for m in ensemble.members]
    if not can_explain(models):
        return None
    depth = array_depth(ensemble)
    return explain_patients(models, array_dir, patients, depth=depth, device=device, batch_size=batch_size)


@dataclass
class _Evaluated:
    """One model's held-out results and what the stage's plots and tables need of them."""

    name: str
    """``3D cnn3d``: the legend of every plot."""
    metrics: dict[str, Any]
    scored: pd.DataFrame
    """The test patients with their label and ``score``."""
    roc: tuple[pd.DataFrame, float, tuple[float, float]]
    calibration: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    explained: _Explained | None


def _test_ensemble(
    array_dir: Path, model_path: Path, splits_path: Path, params: TrainingParams
) -> tuple[pd.DataFrame, Ensemble]:
    """The test patients and the fold-model ensemble that scores them, checked to share no patient."""
    check_model(params.model, params.dim, params.section_name)
    cohort = load_cohort(array_dir, splits_path, params.dim)
    test = cohort.part("test")
    require_both_classes(test["label"], "the test split", "add patients or raise split.test_fraction")
    shape = cohort.sample_shape(test)
    ensemble = load_ensemble(model_path, params.model, params.dim, shape, f"train-{params.dim}")
    leaked = set(test["patient"]) & {p for f in ensemble.folds for p in f.train_patients + f.val_patients}
    if leaked:
        raise UserError(
            f"{model_path} was trained on {len(leaked)} patient(s) that the split now holds out "
            f"for testing: the model and the split are from different runs; run dvc repro"
        )
    return test, ensemble


def _calibration(
    name: str, labels: np.ndarray, scores: np.ndarray, oof: pd.DataFrame | None, metrics: dict[str, Any]
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Reliability-diagram panels of one model; adds ``brier_platt`` (Platt scaling fitted out of fold)."""
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"out-of-fold": {}, "held-out": {}}
    panels["held-out"][name] = (labels, scores)
    if oof is not None and len(set(oof["label"])) == 2:
        oof_labels, oof_scores = oof["label"].to_numpy(), oof["score"].to_numpy()
        platt = PlattScaling.fit(oof_labels, oof_scores)
        metrics["brier_platt"] = brier(labels, platt.apply(scores))
        panels["out-of-fold"][name] = (oof_labels, oof_scores)
        panels["held-out"][f"{name}, Platt-scaled on out-of-fold"] = (labels, platt.apply(scores))
    return panels


def _evaluate_model(
    array_dir: Path,
    model_path: Path,
    splits_path: Path,
    train_params: TrainingParams,
    *,
    params: EvaluateParams,
    seed: int,
    threshold: float,
    lesions: pd.DataFrame | None,
    oof: pd.DataFrame | None,
) -> tuple[_Evaluated, Ensemble]:
    """Score the test patients with one model's ensemble: AUC with its bootstrap CI, metrics at 0.5 and
    at the out-of-fold ``threshold``, calibration, and where the evidence points (with ``lesions``).

    Args:
        array_dir: the model's arrays.
        model_path: its fold-model checkpoint.
        splits_path: ``data/splits.csv``.
        train_params: its training section (model name, batch size, device).
        params: the ``evaluate`` section.
        seed: the shared seed (bootstrap).
        threshold: the decision threshold chosen out of fold.
        lesions: lesion truth of the raw cohort, if any.
        oof: this model's out-of-fold predictions (Platt scaling), if any.
    """
    dim, model = train_params.dim, train_params.model
    test, ensemble = _test_ensemble(array_dir, model_path, splits_path, train_params)
    device = resolve_device(train_params.device)
    configure_torch(train_params.deterministic, train_params.threads, device)
    loader = make_loader(PatientArrays(array_dir, test), train_params.batch_size, False, seed, 0, device)
    scores = ensemble_scores(ensemble, loader, device)
    if not ensemble.learned:
        log.error("evaluate %s: no fold model of %s learned; its scores are chance", dim, model)
    labels = test["label"].to_numpy()
    value = auc(labels, scores)
    low, high = bootstrap_auc_ci(labels, scores, params.bootstrap, params.ci, seed)
    metrics: dict[str, Any] = {
        "auc": value,
        "auc_ci_low": low,
        "auc_ci_high": high,
        **metrics_at(labels, scores, DEFAULT_THRESHOLD),
        "threshold": threshold,
        "at_cv_threshold": metrics_at(labels, scores, threshold),
        "brier": brier(labels, scores),
        "test_patients": len(test),
        "learned": ensemble.learned,
        "ensemble_models": len(ensemble.members),
    }
    name = f"{dim.upper()} {model}"
    calibration = _calibration(name, labels, scores, oof, metrics)
    explained = None
    evidence = explain(ensemble, array_dir, test, device, train_params.batch_size)
    if evidence is None:
        log.info("evaluate %s: %s has no per-location evidence; no evidence maps", dim, model)
    else:
        patients = [str(p) for p in test["patient"]]
        explained = _Explained(
            name, array_dir, evidence, dict(zip(patients, scores.tolist(), strict=True)),
            dict(zip(patients, labels.tolist(), strict=True)), threshold, load_geometry(array_dir),
        )  # fmt: skip
        if lesions is not None:
            game = pointing_game(evidence, explained.labels, explained.geometry, lesions)
            metrics["localisation"] = game.localisation
            metrics["localisation_patients"] = game.patients
            log.info("evaluate %s: highest evidence inside a true metastasis for %s of %d patients", dim,
                     f"{game.localisation:.2f}" if game.localisation is not None else "none",
                     game.patients)  # fmt: skip
    log.info("evaluate %s: AUC %.3f [%.3f, %.3f] on %d test patients", dim, value, low, high, len(test))
    scored = test.assign(score=scores)
    evaluated = _Evaluated(name, metrics, scored, (roc_table(labels, scores), value, (low, high)),
                           calibration, explained)  # fmt: skip
    return evaluated, ensemble


def _write_plots(evaluated: dict[str, _Evaluated], params: EvaluateParams, plots_dir: Path) -> None:
    """ROC and confusion tables (DVC plots) and pictures, the reliability diagram."""
    confusions: dict[str, pd.DataFrame] = {}
    for dim, model in evaluated.items():
        write_csv(plots_dir / "roc" / f"model_{dim}.csv", model.roc[0])
        scored = model.scored
        table = pd.DataFrame(
            {
                "patient": scored["patient"],
                "actual": scored["label"].to_numpy(),
                "predicted": (scored["score"].to_numpy() >= DEFAULT_THRESHOLD).astype(int),
            }
        )
        confusions[f"{model.name} (threshold 0.5)"] = table
        # class names, not 0/1, so DVC's confusion template labels its axes readably
        named = table.assign(**{c: [CLASSES[v] for v in table[c]] for c in ("actual", "predicted")})
        write_csv(plots_dir / "confusion" / f"model_{dim}.csv", named)
    plot_roc({model.name: model.roc for model in evaluated.values()}, plots_dir / "roc.png")
    plot_confusion(confusions, plots_dir / "confusion.png")
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"out-of-fold": {}, "held-out": {}}
    for model in evaluated.values():
        for title, curves in model.calibration.items():
            panels[title].update(curves)
    plot_calibration(
        {title: curves for title, curves in panels.items() if curves},
        params.calibration_bins,
        plots_dir / "calibration.png",
    )


def run_evaluation(
    array_dirs: dict[str, Path],
    model_paths: dict[str, Path],
    splits_path: Path,
    cv_metrics_path: Path,
    train_params: dict[str, TrainingParams],
    params: EvaluateParams,
    seed: int,
    outputs: EvaluateOutputs,
    *,
    raw_dir: Path | None = None,
    cv_predictions_path: Path | None = None,
    external_metrics_path: Path | None = None,
) -> dict:
    """Evaluate each model (keys ``2d``/``3d``) on the test split; returns what goes to ``evaluate.json``.

    Args:
        array_dirs: per model, the arrays (and their ``geometry.json``).
        model_paths: per model, the fold-model checkpoint.
        splits_path: ``data/splits.csv``.
        cv_metrics_path: ``metrics/details/cv.json`` (the thresholds chosen out of fold).
        train_params: ``train_2d`` / ``train_3d`` (model name, batch size, device).
        params: the ``evaluate`` section.
        seed: the shared seed (bootstrap).
        outputs: where everything is written.
        raw_dir: the raw cohort; its ``lesions.csv``, when present, scores where the models looked.
        cv_predictions_path: out-of-fold predictions, for calibration (Platt scaling is fitted on them).
        external_metrics_path: ``metrics/details/external.json`` (the second site), for the model card.
    """
    thresholds = read_cv_thresholds(cv_metrics_path, list(array_dirs))
    lesions = read_lesions(raw_dir) if raw_dir is not None else None
    oof = read_cv_predictions(cv_predictions_path) if cv_predictions_path is not None else None
    evaluated: dict[str, _Evaluated] = {}
    ensembles: dict[str, Ensemble] = {}
    for dim, array_dir in array_dirs.items():
        evaluated[dim], ensembles[dim] = _evaluate_model(
            array_dir, model_paths[dim], splits_path, train_params[dim], params=params, seed=seed,
            threshold=thresholds[dim], lesions=lesions, oof=None if oof is None else oof[oof["model"] == dim],
        )  # fmt: skip
    results = {dim: model.metrics for dim, model in evaluated.items()}
    _write_plots(evaluated, params, outputs.plots_dir)
    explained = {dim: model.explained for dim, model in evaluated.items() if model.explained is not None}
    write_evidence_pictures(explained, lesions, outputs.plots_dir)
    predictions = [model.scored.assign(model=dim) for dim, model in evaluated.items()]
    write_csv(
        outputs.predictions, pd.concat(predictions, ignore_index=True)[["patient", "label", "score", "model"]]
    )
    write_model_card(
        outputs.model_card,
        ModelCardInputs(
            results=results,
            cv_summary=json.loads(cv_metrics_path.read_text()),
            ensembles=ensembles,
            train_params=train_params,
            splits=pd.read_csv(splits_path, dtype={"patient": str}),
            evaluate_params=params,
            has_lesion_truth=lesions is not None,
            external=_read_json(external_metrics_path),
        ),
    )
    write_metrics(outputs.metrics, results, HEADLINE)
    return results


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    if not path.is_file():
        raise UserError(f"{path} not found: run the external stage first (dvc repro external)")
    return json.loads(path.read_text())


def write_evidence_pictures(
    explained: dict[str, _Explained], lesions: pd.DataFrame | None, plots_dir: Path
) -> None:
    """``evidence/<patient>.png`` for every held-out patient (one row per model that has maps) and the
    montage ``evidence.png``; a stale ``evidence/`` of an earlier run is replaced."""
    folder = plots_dir / "evidence"
    if folder.exists():
        shutil.rmtree(folder)
    if not explained:
        return
    folder.mkdir(parents=True)
    montage: dict[str, list[tuple[str, ModelView]]] = {item.title: [] for item in explained.values()}
    patients = sorted({p for item in explained.values() for p in item.evidence}, key=_natural)
    for patient in patients:
        views = []
        for item in explained.values():
            if patient not in item.evidence:
                continue
            view = ModelView(
                title=item.title,
                array=np.load(item.array_dir / f"{patient}.npy", mmap_mode="r"),
                evidence=item.evidence[patient],
                probability=item.scores[patient],
                threshold=item.threshold,
                label=item.labels[patient],
                geometry=item.geometry.get(patient),
            )
            views.append(view)
            montage[item.title].append((patient, view))
        plot_patient_evidence(patient, views, lesions, folder / f"{patient}.png")
    plot_evidence_montage(montage, lesions, plots_dir / "evidence.png")


def _natural(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))
