"""Compare baseline, default and trivial models on one cohort: CV AUC mean ± std and held-out AUC with CI.

    python -m metastases.benchmark --data-2d data/bench/processed/2d --data-3d data/bench/processed/3d \\
        --splits data/bench/splits.csv --out reports/benchmark.md

Every CNN is cross-validated over the training folds (epochs from ``cross_validate``), then trained on
the whole training split (epochs from ``train_<dim>``) and scored on the test split. The trivial
reference is a logistic regression on per-sequence intensity histograms; if it scores like the CNNs, the
cohort is too easy to tell the models apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from metastases.atomic import write_json, write_text
from metastases.cli import configure_logging, run_stage
from metastases.evaluation.metrics import auc, bootstrap_auc_ci, metrics_at
from metastases.models import model_dim
from metastases.params import (
    CrossValidateParams,
    EvaluateParams,
    Train3DParams,
    TrainParams,
    section,
    shared_seed,
)
from metastases.training.cohort import Cohort, load_cohort
from metastases.training.crossval import cross_validate
from metastases.training.dataset import PatientArrays
from metastases.training.loop import fit, make_loader, predict
from metastases.training.runtime import configure_torch, resolve_device

log = logging.getLogger(__name__)

HISTOGRAM_BINS = np.linspace(-3.0, 5.0, 33)
"""Bin edges in standard deviations of the z-scored volume (values outside fall in the end bins)."""


def histogram_features(cohort: Cohort, patients: pd.DataFrame) -> np.ndarray:
    """Per-sequence intensity histograms of the stored arrays, ``[patients, 3 * 32]``."""
    rows = []
    for patient in patients["patient"]:
        volume = np.asarray(np.load(cohort.path(patient), mmap_mode="r"), dtype=np.float32)
        sequences = volume.reshape(3, -1)
        clipped = np.clip(sequences, HISTOGRAM_BINS[0], HISTOGRAM_BINS[-1])
        rows.append(np.concatenate([np.histogram(s, HISTOGRAM_BINS)[0] / s.size for s in clipped]))
    return np.stack(rows)


def _held_out(labels: np.ndarray, scores: np.ndarray, evaluate: EvaluateParams, seed: int) -> dict:
    low, high = bootstrap_auc_ci(labels, scores, evaluate.bootstrap, evaluate.ci, seed)
    return {"test_auc": auc(labels, scores), "test_auc_ci95": [low, high], **metrics_at(labels, scores, 0.5)}


def histogram_reference(cohort: Cohort, evaluate: EvaluateParams, seed: int) -> dict:
    """Logistic regression on intensity histograms: CV over the folds, then held-out on the test split."""
    started = time.process_time()
    fold_aucs = []
    train = cohort.part("train")
    features = histogram_features(cohort, train)
    folds = cohort.splits.set_index("patient").loc[train["patient"], "fold"].to_numpy()
    labels = train["label"].to_numpy()
    for fold in cohort.folds:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        model.fit(features[folds != fold], labels[folds != fold])
        fold_aucs.append(auc(labels[folds == fold], model.predict_proba(features[folds == fold])[:, 1]))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(features, labels)
    test = cohort.part("test")
    scores = model.predict_proba(histogram_features(cohort, test))[:, 1]
    return {
        "model": "histogram logistic regression",
        "dim": "3d",
        "cv_auc_mean": float(np.mean(fold_aucs)),
        "cv_auc_std": float(np.std(fold_aucs, ddof=1)),
        **_held_out(test["label"].to_numpy(), scores, evaluate, seed),
        "cpu_seconds": round(time.process_time() - started, 1),
    }


def benchmark_model(
    cohort: Cohort, params: TrainParams, cv_epochs: int, evaluate: EvaluateParams, seed: int
) -> dict:
    """CV AUC over the folds and held-out AUC (trained on the whole training split) for one CNN."""
    started = time.process_time()
    device = resolve_device(params.device)
    configure_torch(params.deterministic, params.threads, device)
    cv = cross_validate(cohort, params, cv_epochs, seed, device)
    aucs = [f.auc for f in cv.folds]
    train, test = cohort.part("train"), cohort.part("test")
    shape = cohort.sample_shape(test)
    fitted = fit(
        cohort.array_dir, train, None, params, params.epochs, seed, device, shape, f"bench {params.model}"
    )
    loader = make_loader(PatientArrays(cohort.array_dir, test), params.batch_size, False, seed, 0, device)
    scores, _ = predict(fitted.model, loader, device)
    return {
        "model": params.model,
        "dim": params.dim,
        "cv_auc_mean": float(np.mean(aucs)),
        "cv_auc_std": float(np.std(aucs, ddof=1)),
        **_held_out(test["label"].to_numpy(), scores, evaluate, seed),
        "cpu_seconds": round(time.process_time() - started, 1),
        "data_wait_share": round(fitted.timing.data_wait_share, 3),
    }


def markdown_table(rows: list[dict], cohort_size: int, test_size: int) -> str:
    lines = [
        f"Cohort: {cohort_size} patients, {test_size} held out for test.",
        "",
        "| model | input | CV AUC (mean ± std) | held-out AUC [95% CI] | held-out accuracy | CPU s |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = row["test_auc_ci95"]
        lines.append(
            f"| {row['model']} | {row['dim']} | {row['cv_auc_mean']:.3f} ± {row['cv_auc_std']:.3f} | "
            f"{row['test_auc']:.3f} [{low:.3f}, {high:.3f}] | {row['accuracy']:.3f} | {row['cpu_seconds']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--data-2d", type=Path, default=Path("data/processed/2d"), help="2D arrays")
    parser.add_argument("--data-3d", type=Path, default=Path("data/processed/3d"), help="3D arrays")
    parser.add_argument("--splits", type=Path, default=Path("data/splits.csv"), help="split table")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["alexnet2d", "cnn2d", "lenet3d", "cnn3d"],
        help="registered model names",
    )
    parser.add_argument("--out", type=Path, default=Path("reports/benchmark.md"), help="markdown table")
    parser.add_argument("--json", type=Path, default=Path("reports/benchmark.json"), help="the same as JSON")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    seed = shared_seed(args.params)
    base = {
        "2d": section(TrainParams, "train_2d", args.params),
        "3d": section(Train3DParams, "train_3d", args.params),
    }
    cv_params = section(CrossValidateParams, "cross_validate", args.params)
    evaluate = section(EvaluateParams, "evaluate", args.params)
    cohorts = {
        "2d": load_cohort(args.data_2d, args.splits, "2d"),
        "3d": load_cohort(args.data_3d, args.splits, "3d"),
    }
    rows = [histogram_reference(cohorts["3d"], evaluate, seed)]
    for name in args.models:
        dim = model_dim(name)
        params = dataclasses.replace(base[dim], model=name)
        epochs = cv_params.epochs_2d if dim == "2d" else cv_params.epochs_3d
        rows.append(benchmark_model(cohorts[dim], params, epochs, evaluate, seed))
        log.info("%s: %s", name, rows[-1])
    splits = cohorts["2d"].splits
    table = markdown_table(rows, len(splits), int((splits["split"] == "test").sum()))
    write_json(args.json, rows)
    write_text(args.out, table)
    log.info("benchmark table written to %s\n%s", args.out, table)


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
