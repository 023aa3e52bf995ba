"""What the external stage does: score a second site's patients (data/external) with the final fold
ensembles, as a new hospital would use them.

Nothing here chooses anything on the external patients except the documented adaptation: the threshold
chosen again on a stratified calibration share of them, with before/after reported on the others only.
Their arrays are built with the preprocessing each checkpoint records (never today's params).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from metastases.atomic import write_csv
from metastases.errors import UserError
from metastases.evaluation.calibration import brier
from metastases.evaluation.evidence import (
    Evidence,
    array_depth,
    can_explain,
    ensemble_evidence,
    evidence_for,
    pointing_game,
)
from metastases.evaluation.evidence_plots import ModelView, plot_evidence_montage
from metastases.evaluation.held_out import read_cv_thresholds
from metastases.evaluation.metrics import auc, bootstrap_auc_ci, metrics_at, roc_table, youden_threshold
from metastases.evaluation.new_patients import checkpoint_preprocessing, prepare_array
from metastases.ingest.studies import study_uids
from metastases.lesion_truth import read_lesions
from metastases.metrics_file import write_metrics
from metastases.params import CLASSES, SEQUENCES, EvaluateParams, ExternalParams, TrainingParams
from metastases.plotting import plot_roc
from metastases.training.checkpoint import Ensemble, open_ensemble
from metastases.training.runtime import configure_torch
from metastases.volumes import GridGeometry

log = logging.getLogger(__name__)

FIX_MODEL = "retrain the models with this version (dvc repro)"
HEADLINE = ("2d.auc", "2d.localisation", "3d.auc", "3d.localisation")
"""What ``metrics/external.json`` shows (``dvc metrics show``): the held-out stage's keys, so that the two
sites line up in the same columns; the rest (sensitivity and specificity before and after adaptation) is in
``metrics/details/external.json`` and ``make metrics``."""
PARTS = ("calibration", "evaluation")


@dataclass(frozen=True)
class ExternalOutputs:
    metrics: Path = Path("metrics/external.json")
    predictions: Path = Path("metrics/external_predictions.csv")
    plots_dir: Path = Path("plots")
    """``external_roc/model_<dim>.csv`` (DVC plots), ``external_roc.png``, ``external_evidence.png``."""


@dataclass(frozen=True)
class Cohorts:
    """Where the two sites' data are: the external one is scored, the internal one only checked against."""

    external_interim: Path
    external_raw: Path
    internal_interim: Path
    internal_raw: Path


def _ok_patients(interim: Path) -> pd.DataFrame:
    path = interim / "manifest.csv"
    if not path.is_file():
        raise UserError(f"{path} not found: run its ingest stage first (dvc repro)")
    manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    return manifest[manifest["status"] == "ok"].reset_index(drop=True)


def check_disjoint(cohorts: Cohorts, external: pd.DataFrame) -> None:
    """One error line when a patient is in both cohorts: the same pseudonym key or the same DICOM study."""
    internal_keys = set(_ok_patients(cohorts.internal_interim)["patient"])
    shared_keys = internal_keys & set(external["patient"])
    shared_studies = study_uids(cohorts.internal_raw) & study_uids(cohorts.external_raw)
    if shared_keys or shared_studies:
        what = []
        if shared_keys:
            what.append(f"{len(shared_keys)} patient key(s) ({', '.join(sorted(shared_keys)[:3])})")
        if shared_studies:
            what.append(f"{len(shared_studies)} DICOM study (StudyInstanceUID)")
        raise UserError(
            f"{cohorts.external_raw} and {cohorts.internal_raw} share {' and '.join(what)}: a patient "
            "the models trained or were tested on is no external validation; remove it from one cohort"
        )


def calibration_parts(patients: pd.DataFrame, fraction: float, seed: int) -> pd.Series:
    """``calibration`` or ``evaluation`` per patient: a stratified ``fraction`` (by label) for choosing
    the threshold again; all ``evaluation`` when it cannot hold both classes (or ``fraction`` is 0)."""
    parts = pd.Series("evaluation", index=patients.index)
    labels = patients["label"]
    count = round(fraction * len(patients))
    if fraction == 0 or labels.nunique() < 2 or count < 2 or len(patients) - count < 2:
        return parts
    if labels.value_counts().min() < 2:
        return parts
    calibration, _ = train_test_split(patients.index, test_size=len(patients) - count, stratify=labels,
                                      random_state=seed)  # fmt: skip
    parts[calibration] = "calibration"
    return parts


def _defined(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """:func:`metrics_at`, without the numbers one class leaves undefined."""
    with warnings.catch_warnings():  # one class: scikit-learn warns about the class it never saw
        warnings.simplefilter("ignore", UserWarning)
        values = metrics_at(labels, scores, threshold)
    if (labels == 1).all() or (labels == 0).all():
        drop = {"balanced_accuracy", "f1", "specificity" if (labels == 1).all() else "sensitivity"}
        values = {k: v for k, v in values.items() if k not in drop}
    return values


def site_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    parts: np.ndarray,
    *,
    threshold: float,
    params: EvaluateParams,
    seed: int,
) -> dict[str, Any]:
    """One model's numbers on the external site.

    Args:
        labels: 1 metastases, 0 normal, per external patient.
        scores: the ensemble's probability of metastases.
        parts: ``calibration``/``evaluation`` per patient (:func:`calibration_parts`).
        threshold: the threshold chosen out of fold on the training site.
        params: the ``evaluate`` section (bootstrap resamples, interval).
        seed: the shared seed (bootstrap).
    """
    both = len(set(labels.tolist())) == 2
    out: dict[str, Any] = {"patients": len(labels), "threshold": threshold}
    if both:
        low, high = bootstrap_auc_ci(labels, scores, params.bootstrap, params.ci, seed)
        out.update(auc=auc(labels, scores), auc_ci_low=low, auc_ci_high=high)
    else:
        out["auc_undefined"] = f"one class only ({CLASSES[int(labels[0])]})"
    out["brier"] = brier(labels, scores)
    out["all_at_cv_threshold"] = _defined(labels, scores, threshold)
    evaluation = parts == "evaluation"
    out["at_cv_threshold"] = _defined(labels[evaluation], scores[evaluation], threshold)
    calibration = parts == "calibration"
    if calibration.any():
        adapted = youden_threshold(labels[calibration], scores[calibration])
        out["adapted_threshold"] = adapted
        out["adapted"] = _defined(labels[evaluation], scores[evaluation], adapted)
    return out


@dataclass
class _Scored:
    name: str
    scores: np.ndarray
    evidence: dict[str, Evidence] | None
    arrays: dict[str, np.ndarray]
    geometry: dict[str, GridGeometry]


@torch.inference_mode()
def score_site(ensemble: Ensemble, path: Path, patients: pd.DataFrame, interim: Path) -> _Scored:
    """The ensemble's probability (and evidence, where the model has maps) for every external patient."""
    device = torch.device("cpu")
    params = checkpoint_preprocessing(ensemble, path, FIX_MODEL)
    arrays, geometry = {}, {}
    for row in patients.itertuples():
        volumes = {s: interim / str(getattr(row, f"{s}_file")) for s in SEQUENCES}
        arrays[row.patient], geometry[row.patient] = prepare_array(
            ensemble, volumes, params, path=path, fix=FIX_MODEL
        )
    batch = torch.from_numpy(np.stack([arrays[p] for p in patients["patient"]]))
    fold_scores = {
        m.fold: torch.softmax(m.model(batch), dim=1)[:, 1].numpy().astype(np.float64)
        for m in ensemble.members
    }
    scores = ensemble.mean_score(fold_scores)
    members = [m.model for m in ensemble.members]
    evidence = None
    if can_explain(members):
        loader = [(batch, torch.zeros(len(batch), dtype=torch.long))]
        heats = ensemble_evidence(members, loader, device, depth=array_depth(ensemble))  # type: ignore[arg-type]
        evidence = evidence_for([str(p) for p in patients["patient"]], heats)
    return _Scored(f"{ensemble.dim.upper()} {ensemble.model_name}", scores, evidence, arrays, geometry)


def _write_nothing(outputs: ExternalOutputs, dims: list[str]) -> dict[str, Any]:
    """The outputs of a run without an external cohort: no patients, empty tables, pictures saying so."""
    write_csv(outputs.predictions, pd.DataFrame(columns=["patient", "label", "score", "model", "part"]))
    for dim in dims:
        write_csv(outputs.plots_dir / "external_roc" / f"model_{dim}.csv",
                  pd.DataFrame(columns=["fpr", "tpr", "threshold"]))  # fmt: skip
    plot_roc({}, outputs.plots_dir / "external_roc.png", title="External site: no external cohort")
    plot_evidence_montage({}, None, outputs.plots_dir / "external_evidence.png",
                          title="External site: no external cohort")  # fmt: skip
    results: dict[str, Any] = {"patients": 0}
    write_metrics(outputs.metrics, results, HEADLINE)  # no external cohort: an empty headline
    return results


def run_external(
    cohorts: Cohorts,
    model_paths: dict[str, Path],
    cv_metrics_path: Path,
    *,
    params: ExternalParams,
    evaluate_params: EvaluateParams,
    train_params: dict[str, TrainingParams],
    seed: int,
    outputs: ExternalOutputs,
) -> dict[str, Any]:
    """Score the external cohort with each model; returns what goes to ``metrics/details/external.json``.

    Args:
        cohorts: the external cohort's ingest output and raw folder, and the training site's.
        model_paths: per model (``2d``/``3d``), the fold-model checkpoint.
        cv_metrics_path: ``metrics/details/cv.json`` (thresholds and out-of-fold AUC of the training site).
        params: the ``external`` section.
        evaluate_params: the ``evaluate`` section (bootstrap).
        train_params: ``train_2d``/``train_3d``: threads and determinism, as evaluate scores (CPU).
        seed: the shared seed (bootstrap, calibration share).
        outputs: where everything is written.
    """
    patients = _ok_patients(cohorts.external_interim)
    if patients.empty:
        log.info("external: no external cohort (%s holds no usable patient); nothing scored",
                 cohorts.external_raw)  # fmt: skip
        return _write_nothing(outputs, list(model_paths))
    check_disjoint(cohorts, patients)
    patients = patients.assign(label=[CLASSES.index(v) for v in patients["label"]])
    thresholds = read_cv_thresholds(cv_metrics_path, list(model_paths))
    internal = json.loads(cv_metrics_path.read_text())
    parts = calibration_parts(patients, params.calibration_fraction, seed).to_numpy()
    labels = patients["label"].to_numpy()
    lesions = read_lesions(cohorts.external_raw)
    results: dict[str, Any] = {
        "patients": len(patients),
        "calibration_patients": int((parts == "calibration").sum()),
    }
    labelled = dict(zip(patients["patient"], labels.tolist(), strict=True))
    predictions, tables, curves, montage = [], {}, {}, {}
    for dim, path in model_paths.items():  # everything is scored before anything is written
        configure_torch(train_params[dim].deterministic, train_params[dim].threads, torch.device("cpu"))
        scored = score_site(open_ensemble(path, FIX_MODEL), path, patients, cohorts.external_interim)
        metrics = site_metrics(
            labels, scored.scores, parts, threshold=thresholds[dim], params=evaluate_params, seed=seed
        )
        oof_auc = internal.get(dim, {}).get("oof_auc")
        if oof_auc is not None and "auc" in metrics:
            metrics["out_of_fold_auc"] = oof_auc
            metrics["auc_gap"] = metrics["auc"] - oof_auc
        if scored.evidence is not None:
            if lesions is not None:
                game = pointing_game(scored.evidence, labelled, scored.geometry, lesions)
                metrics["localisation"] = game.localisation
                metrics["localisation_patients"] = game.patients
            montage[scored.name] = _views(scored, labelled, thresholds[dim])
        results[dim] = metrics
        tables[dim] = (
            roc_table(labels, scored.scores) if "auc" in metrics else pd.DataFrame(columns=["fpr", "tpr"])
        )
        if "auc" in metrics:
            curves[scored.name] = (
                tables[dim],
                metrics["auc"],
                (metrics["auc_ci_low"], metrics["auc_ci_high"]),
            )
        predictions.append(patients[["patient", "label"]].assign(score=scored.scores, model=dim, part=parts))
        _log(dim, metrics)
    plots = outputs.plots_dir
    for dim, table in tables.items():
        write_csv(plots / "external_roc" / f"model_{dim}.csv", table)
    plot_roc(curves, plots / "external_roc.png", title="ROC on the external site (95% bootstrap CI)")
    title = "External site: T1+C at each model's strongest evidence (+); TP/FN/FP/TN at the CV threshold"
    plot_evidence_montage(montage, lesions, plots / "external_evidence.png", title=title)
    write_csv(outputs.predictions, pd.concat(predictions, ignore_index=True))
    write_metrics(outputs.metrics, results, HEADLINE)
    return results


def _views(scored: _Scored, labels: dict[str, int], threshold: float) -> list[tuple[str, ModelView]]:
    assert scored.evidence is not None
    return [
        (p, ModelView(scored.name, scored.arrays[p], scored.evidence[p], float(score), threshold, labels[p],
                      scored.geometry[p]))
        for p, score in zip(labels, scored.scores, strict=True)
    ]  # fmt: skip


def _log(dim: str, metrics: dict[str, Any]) -> None:
    before, after = metrics["at_cv_threshold"], metrics.get("adapted")

    def pair(values: dict[str, float] | None) -> str:
        if values is None:
            return "n/a"
        return f"sensitivity {values.get('sensitivity', float('nan')):.2f}, " \
               f"specificity {values.get('specificity', float('nan')):.2f}"  # fmt: skip

    auc_text = (
        f"AUC {metrics['auc']:.3f}" if "auc" in metrics else f"AUC undefined ({metrics['auc_undefined']})"
    )
    log.info("external %s: %s on %d patients; at the out-of-fold threshold %s; adapted %s", dim, auc_text,
             metrics["patients"], pair(before), pair(after))  # fmt: skip
