"""Compare baselines, defaults and a trivial reference on one cohort, over one or more training seeds.

From scratch, on a larger demo cohort of its own (what ``make benchmark`` runs)::

    python -m metastases.benchmark --build data/benchmark --seeds 3 --jobs 2 --threads 1

builds ``data/benchmark/{raw,interim,2d,3d}`` and ``splits.csv`` (240 patients, generator seed 11,
ingest/split/array params from params.yaml) and writes ``data/benchmark/benchmark.{md,json}``. On
arrays that already exist::

    python -m metastases.benchmark --data-2d DIR/2d --data-3d DIR/3d --splits DIR/splits.csv --out T.md

Rows (``--models``, in the order given): ``NAME`` trains model NAME with the settings of params.yaml's
``train_<dim>`` section (model swapped, the same recipe for every model of a kind); ``NAME:study`` trains
it with the original study's optimiser settings instead ("study recipe": Adam lr 1e-4 constant, batch 10,
30 epochs for 2D / 20 for 3D, weight decay 0, noise 0, intensity shift 0, no rotation or scaling, no
restarts; flips as params.yaml says). The default compares each baseline in both recipes with the default
model of its kind: ``alexnet2d:study@1 alexnet2d@1 cnn2d lenet3d:study lenet3d@1 cnn3d``. The first row is
always a trivial reference: a logistic regression on per-sequence intensity histograms, cross-validated
over the same folds and refitted on the whole training split for the held-out column; if it scores like
the CNNs, the cohort is too easy to tell the models apart.

Every CNN row is what the pipeline does: ``train_folds`` trains one model per fold (K models, each on
the other K-1 folds, with ``restarts``); their out-of-fold scores give the pooled CV AUC and the per-fold
AUCs; the mean of the fold models that learned (all K if none did) scores the test split (held-out AUC
with a bootstrap CI). Nothing is trained twice. ``not learned`` counts fold models whose training loss
never left chance, even after the restarts.

``--seeds N`` repeats every CNN row for the training seeds ``seed, seed+1, ..., seed+N-1`` (``seed`` from
params.yaml; the split and the bootstrap seed stay fixed) and reports per row the mean ± std (ddof 1)
over seeds of the out-of-fold AUC and of the held-out AUC, their minimum, the fold AUCs pooled over
seeds, and the total count of fold models that never learned. A row written ``NAME@N`` (or
``NAME:study@N``) runs for the first N of those seeds only and is marked so in the table: the default
measures the slow study baselines once (``alexnet2d:study@1 alexnet2d@1``, ``lenet3d@1``), since they cost
hours a seed on 2 cores. The JSON holds the per-seed runs (``runs``) and the aggregated rows (``rows``);
the markdown holds the aggregated table.

``--epochs N`` uses N epochs for every CNN row, both recipes alike (a quick check); ``--jobs J`` trains J
fold models at once, one process each, whatever rows they belong to (give each ``--threads 1`` on a
2-core machine); the numbers are those of a serial run. Every fold model is saved as it finishes
(``<json stem>-folds/``), and the table and JSON are rewritten after every (row, seed) run, so
``--resume`` after an interruption retrains only the fold models that were training.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from metastases.arrays import build_arrays, load_geometry, read_manifest
from metastases.atomic import write_csv, write_json, write_text
from metastases.benchmark_folds import FoldTask, TrainedFold, cpu_seconds, fold_tasks, load_fold, run_folds
from metastases.cli import configure_logging, run_stage
from metastases.demo_cohort.build import build_cohort
from metastases.errors import ParamsError
from metastases.evaluation.evidence import pointing_game
from metastases.evaluation.held_out import explain
from metastases.evaluation.metrics import auc, bootstrap_auc_ci, metrics_at
from metastases.evaluation.out_of_fold import out_of_fold_evidence
from metastases.ingest import ingest_cohort
from metastases.lesion_truth import read_lesions
from metastases.models import model_dim
from metastases.params import (
    CLASSES,
    EvaluateParams,
    IngestParams,
    SplitParams,
    TrainingParams,
    section,
    shared_seed,
    train_sections,
    volume_section,
)
from metastases.splits import make_splits
from metastases.training.checkpoint import Ensemble, FoldModel
from metastases.training.dataset import PatientArrays
from metastases.training.folds import FoldResult
from metastases.training.inputs import Cohort, load_cohort
from metastases.training.loop import Timing, make_loader, predict
from metastases.training.runtime import configure_torch, resolve_device

log = logging.getLogger(__name__)

HISTOGRAM_BINS = np.linspace(-3.0, 5.0, 33)
"""Bin edges in standard deviations of the z-scored volume (values outside fall in the end bins)."""

BENCHMARK_PATIENTS = 240
BENCHMARK_COHORT_SEED = 11
"""The benchmark cohort: same generator as the demo cohort (60 patients, seed 7), another seed."""

DEFAULT_ROWS = ("alexnet2d:study@1", "alexnet2d@1", "cnn2d", "lenet3d:study", "lenet3d@1", "cnn3d")
"""``--models`` default: each baseline in the study recipe and in params' recipe, then the default model.
The slow baselines cost hours a seed on 2 cores, so they are measured once (``@1``); the defaults and the
cheap LeNet-3D study recipe get every training seed."""

STUDY_SUFFIX = ":study"

STUDY_RECIPE: dict[str, Any] = {
    "lr": 1e-4,
    "lr_schedule": "constant",
    "batch_size": 10,
    "weight_decay": 0.0,
    "noise_std": 0.0,
    "intensity_shift": 0.0,
    "rotate_degrees": 0.0,
    "scale": 0.0,
    "restarts": 0,
}
"""The original study's optimiser and augmentation settings (Adam is the only optimiser; the study flipped
left-right and added noise on raw intensities, nothing else) and its single training per model (no
restarts: a fold model at chance is counted, not retried); epochs in :data:`STUDY_EPOCHS`."""

STUDY_EPOCHS = {"2d": 30, "3d": 20}

RECORDED_SETTINGS = (
    "epochs", "batch_size", "lr", "lr_schedule", "weight_decay", "restarts",
    "flip_horizontal", "flip_vertical", "noise_std", "intensity_shift", "rotate_degrees", "scale",
    "micro_batch",
)  # fmt: skip
"""The training settings written to every row of the JSON."""

REFERENCE = "histogram logistic regression"


@dataclass(frozen=True)
class BenchmarkData:
    """Where ``--build DIR`` puts the benchmark cohort and its results."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def interim(self) -> Path:
        return self.root / "interim"

    @property
    def splits(self) -> Path:
        return self.root / "splits.csv"

    def arrays(self, dim: str) -> Path:
        return self.root / dim


def build_benchmark_data(
    data: BenchmarkData, params_path: str | Path, *, patients: int, cohort_seed: int, workers: int
) -> None:
    """Demo cohort -> ingest -> split -> 2D and 3D arrays under ``data.root``, as the pipeline's stages do.

    Uses the ``ingest``, ``split``, ``slice_2d`` and ``stack_3d`` sections and the shared seed of
    ``params_path``, so the benchmark sees the same geometry as ``make run``; every step replaces its
    previous output.

    Args:
        data: where the cohort, its arrays and the split go.
        params_path: the params file.
        patients: demo-cohort size.
        cohort_seed: demo-cohort generator seed.
        workers: parallel processes.
    """
    log.info("benchmark cohort: %d patients, seed %d -> %s", patients, cohort_seed, data.raw)
    build_cohort(data.raw, patients, cohort_seed, workers)
    ingest = dataclasses.replace(section(IngestParams, "ingest", params_path), workers=workers)
    ingest_cohort(data.raw, data.interim, ingest)
    manifest = read_manifest(data.interim)
    patients_frame = manifest.assign(label=[CLASSES.index(name) for name in manifest["label"]])
    splits = make_splits(
        patients_frame[["patient", "label"]],
        section(SplitParams, "split", params_path),
        shared_seed(params_path),
    )
    write_csv(data.splits, splits)
    for dim, name in (("2d", "slice_2d"), ("3d", "stack_3d")):
        params = volume_section(name, params_path)
        build_arrays(data.interim, data.arrays(dim), params, dim, workers=workers)


@dataclass(frozen=True)
class RowSpec:
    """One CNN row of the table: a registered model, the recipe it trains with, and how many of the
    training seeds it runs for."""

    model: str
    recipe: str
    """``params`` (params.yaml's ``train_<dim>``) or ``study`` (the original study's settings)."""
    seeds: int | None = None
    """``@N``: only the first N training seeds (a slow row measured once); ``None``: every seed."""

    @property
    def name(self) -> str:
        return f"{self.model} (study recipe)" if self.recipe == "study" else self.model

    @property
    def dim(self) -> str:
        return model_dim(self.model)


def parse_row(text: str) -> RowSpec:
    """``NAME`` or ``NAME:study``, either optionally followed by ``@N`` (the first N training seeds only);
    an unknown model name or a bad ``N`` is a one-line params error."""
    row, at, count = text.partition("@")
    if row.endswith(":seed"):
        raise ParamsError(f"--models {text}: the study's recipe is now written NAME:study ({row[:-5]}:study)")
    if at and not (count.isdigit() and int(count) >= 1):
        raise ParamsError(f"--models {text}: @N needs a whole number of training seeds, at least 1")
    model, recipe = (row[: -len(STUDY_SUFFIX)], "study") if row.endswith(STUDY_SUFFIX) else (row, "params")
    model_dim(model)
    return RowSpec(model, recipe, int(count) if at else None)


def row_params(
    spec: RowSpec, base: dict[str, TrainingParams], *, epochs: int | None = None, threads: int | None = None
) -> TrainingParams:
    """The training params of a row: ``train_<dim>`` with the model swapped, the study recipe applied.

    Args:
        spec: the row.
        base: params.yaml's ``train_2d`` / ``train_3d`` sections by dim.
        epochs: overrides the recipe's epochs (``--epochs``).
        threads: overrides the torch threads (``--threads``).
    """
    params = dataclasses.replace(base[spec.dim], model=spec.model)
    if spec.recipe == "study":
        params = dataclasses.replace(params, epochs=STUDY_EPOCHS[spec.dim], **STUDY_RECIPE)
    if epochs is not None:
        params = dataclasses.replace(params, epochs=epochs)
    if threads is not None:
        params = dataclasses.replace(params, threads=threads)
    return params


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
    """Logistic regression on intensity histograms: CV over the folds, then held-out on the test split.

    Deterministic (no training seed): it runs once whatever ``--seeds`` says.
    """
    started, cpu = time.perf_counter(), cpu_seconds()
    train = cohort.part("train")
    features = histogram_features(cohort, train)
    folds = cohort.splits.set_index("patient").loc[train["patient"], "fold"].to_numpy()
    labels = train["label"].to_numpy()
    out_of_fold = np.zeros(len(train))
    fold_aucs = []
    for fold in cohort.folds:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        model.fit(features[folds != fold], labels[folds != fold])
        out_of_fold[folds == fold] = model.predict_proba(features[folds == fold])[:, 1]
        fold_aucs.append(auc(labels[folds == fold], out_of_fold[folds == fold]))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(features, labels)
    test = cohort.part("test")
    scores = model.predict_proba(histogram_features(cohort, test))[:, 1]
    return {
        "row": f"{REFERENCE} (trivial reference)",
        "model": REFERENCE,
        "recipe": "reference",
        "dim": "3d",
        "input_shape": [3, len(HISTOGRAM_BINS) - 1],
        "seed": None,
        "settings": {"C": 0.1, "bins": len(HISTOGRAM_BINS) - 1},
        "cv_auc_oof": auc(labels, out_of_fold),
        "fold_aucs": fold_aucs,
        "fold_auc_mean": float(np.mean(fold_aucs)),
        "fold_auc_std": float(np.std(fold_aucs, ddof=1)),
        "fold_models": len(fold_aucs),
        "not_learned": 0,
        "ensemble_size": None,
        **_held_out(test["label"].to_numpy(), scores, evaluate, seed),
        "cpu_seconds": round(cpu_seconds() - cpu, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


@dataclass(frozen=True)
class Job:
    """One (row, training seed) of the table: its K fold models train as tasks of ``--jobs``
    (:mod:`metastases.benchmark_folds`), then :func:`score_run` scores them in the benchmark's process."""

    cohort: Cohort
    params: TrainingParams
    spec: RowSpec
    seed: int
    evaluate: EvaluateParams
    bootstrap_seed: int
    lesions: pd.DataFrame | None = None


def score_run(job: Job, trained: list[TrainedFold]) -> dict:
    """One benchmark run from its K trained fold models: cross-validation from their out-of-fold scores,
    the held-out AUC of the mean of those that learned on the test split, the pointing game where the
    model has evidence maps, and the cost (the fold trainings' CPU and wall seconds plus this scoring).

    The fold models are what ``train_folds`` trains (:mod:`metastases.benchmark_folds`); the row is
    ``job.spec``'s, recorded with its recipe and settings.
    """
    started, cpu = time.perf_counter(), cpu_seconds()
    params, cohort, seed = job.params, job.cohort, job.seed
    device = resolve_device(params.device)
    configure_torch(params.deterministic, params.threads, device)
    trained = sorted(trained, key=lambda t: t.result.fold)
    folds = [t.result for t in trained]
    timing = Timing()
    for fold in trained:
        timing.add(fold.timing)
    out_of_fold = pd.concat([t.scored for t in trained], ignore_index=True)
    test = cohort.part("test")
    shape = cohort.sample_shape(test)
    loader = make_loader(PatientArrays(cohort.array_dir, test), params.batch_size, False, seed, 0, device)
    fold_scores = {f.fold: predict(f.model.to(device), loader, device)[0] for f in folds}
    ensemble = Ensemble(
        model_name=params.model,
        dim=params.dim,
        input_shape=shape,
        folds=[FoldModel(f.fold, f.model, f.learned, f.train_patients, f.val_patients) for f in folds],
        out_of_fold=out_of_fold,
        meta={},
    )
    members = [member.fold for member in ensemble.members]
    scores = ensemble.mean_score(fold_scores)
    labels = test["label"].to_numpy()
    fold_aucs = [f.auc for f in folds]
    localisation = _localisation(ensemble, cohort, test, job.lesions, params, device)
    learned = [f for f in folds if f.learned]
    return {
        "row": job.spec.name,
        "model": params.model,
        "recipe": job.spec.recipe,
        "dim": params.dim,
        "input_shape": list(shape),
        "seed": seed,
        "settings": {key: getattr(params, key) for key in RECORDED_SETTINGS},
        "cv_auc_oof": auc(out_of_fold["label"], out_of_fold["score"]),
        "fold_aucs": fold_aucs,
        "fold_auc_mean": float(np.mean(fold_aucs)),
        "fold_auc_std": float(np.std(fold_aucs, ddof=1)),
        "folds": [_fold_record(f) for f in folds],
        "fold_models": len(folds),
        "not_learned": len(folds) - len(learned),
        "ensemble_size": len(members),
        "ensemble_folds": members,
        **_held_out(labels, scores, job.evaluate, job.bootstrap_seed),
        "test_predictions": {
            "patient": [str(p) for p in test["patient"]],
            "label": [int(y) for y in labels],
            "score": [float(s) for s in scores],
            "fold_scores": {str(fold): [float(s) for s in fold_scores[fold]] for fold in fold_scores},
        },
        **localisation,
        "cpu_seconds": round(sum(t.cpu_seconds for t in trained) + cpu_seconds() - cpu, 1),
        "wall_seconds": round(sum(t.wall_seconds for t in trained) + time.perf_counter() - started, 1),
        "data_wait_share": round(timing.data_wait_share, 3),
    }


def _localisation(
    ensemble: Ensemble,
    cohort: Cohort,
    test: pd.DataFrame,
    lesions: pd.DataFrame | None,
    params: TrainingParams,
    device: torch.device,
) -> dict[str, float | None]:
    """The pointing game on the test split (ensemble) and out of fold; None where it cannot be scored."""
    empty: dict[str, float | None] = {"localisation_test": None, "localisation_oof": None}
    if lesions is None:
        return empty
    held_out = explain(ensemble, cohort.array_dir, test, device, params.batch_size)
    out_of_fold = out_of_fold_evidence(ensemble, cohort.array_dir, params.batch_size)
    if held_out is None or out_of_fold is None:
        return empty
    geometry = load_geometry(cohort.array_dir)
    train = cohort.part("train")
    labels = dict(zip(train["patient"].astype(str), train["label"].astype(int), strict=True))
    labels |= dict(zip(test["patient"].astype(str), test["label"].astype(int), strict=True))
    test_game = pointing_game(held_out, labels, geometry, lesions)
    oof_game = pointing_game(out_of_fold, labels, geometry, lesions)
    return {"localisation_test": test_game.localisation, "localisation_oof": oof_game.localisation}


def job_key(job: Job, data_id: str) -> str:
    """What makes a run reusable by ``--resume``: its row, training seed, every training setting that
    changes the numbers, and the data it trained on (``data_id``)."""
    settings = {k: v for k, v in dataclasses.asdict(job.params).items() if k not in TrainingParams.SPEED_ONLY}
    text = json.dumps([job.spec.name, job.seed, settings, data_id], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_identity(splits: Path, *array_dirs: Path) -> str:
    """A short digest of the split table, every array file, and the code that trains and scores (the
    package's ``models``, ``training`` and ``evaluation`` modules): a resumed run must have used the same
    data and the same code. Not ``params.py``: every setting it holds that changes a run's numbers is in
    the run's :func:`job_key` by value, so a new default of a speed-only setting keeps the saved runs."""
    package = Path(__file__).parent
    code = sorted(
        path for part in ("models", "training", "evaluation") for path in (package / part).rglob("*.py")
    )
    data = [path for directory in array_dirs for path in sorted(directory.rglob("*")) if path.is_file()]
    digest = hashlib.sha256()
    for path in [splits, *data, *code]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def previous_runs(path: Path, option: str = "--resume") -> dict[str, dict]:
    """Runs saved by an earlier (possibly interrupted) benchmark in ``path``, by :func:`job_key`; none if
    ``path`` does not exist yet. ``option`` names the command-line option in the error line."""
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ParamsError(
            f"{option}: {path} is not a benchmark JSON ({error.msg}); remove it or drop {option}"
        ) from None
    if not isinstance(saved, dict):
        raise ParamsError(f"{option}: {path} is not a benchmark JSON (no runs); remove it or drop {option}")
    return {run["job_key"]: run for run in saved.get("runs", []) if "job_key" in run}


def runs_from(paths: list[Path]) -> dict[str, dict]:
    """The runs of other benchmark JSONs (``--runs-from``: other sittings or machines), by job key."""
    runs: dict[str, dict] = {}
    for path in paths:
        if not path.is_file():
            raise ParamsError(f"--runs-from: {path} does not exist")
        runs.update(previous_runs(path, "--runs-from"))
    return runs


def _std(values: list[float]) -> float | None:
    """Sample standard deviation (ddof 1); ``None`` for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def aggregate(runs: list[dict]) -> dict:
    """One table row from the runs of one row over the training seeds (``runs`` in seed order)."""
    first = runs[0]
    oof = [r["cv_auc_oof"] for r in runs]
    held_out = [r["test_auc"] for r in runs]
    fold_aucs = [a for r in runs for a in r["fold_aucs"]]
    row = {key: first[key] for key in ("row", "model", "recipe", "dim", "input_shape", "settings")} | {
        "seeds": [r["seed"] for r in runs],
        "cv_auc_oof_mean": float(np.mean(oof)),
        "cv_auc_oof_std": _std(oof),
        "cv_auc_oof_min": float(np.min(oof)),
        "fold_auc_mean": float(np.mean(fold_aucs)),
        "fold_auc_std": _std(fold_aucs),
        "test_auc_mean": float(np.mean(held_out)),
        "test_auc_std": _std(held_out),
        "test_auc_min": float(np.min(held_out)),
        "test_auc_ci95": first["test_auc_ci95"] if len(runs) == 1 else None,
        "localisation_test_mean": _mean_of_known([r.get("localisation_test") for r in runs]),
        "localisation_oof_mean": _mean_of_known([r.get("localisation_oof") for r in runs]),
        "not_learned": sum(r["not_learned"] for r in runs),
        "fold_models": sum(r["fold_models"] for r in runs),
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in runs), 1),
        "wall_seconds": round(sum(r["wall_seconds"] for r in runs), 1),
    }
    return row


def _mean_of_known(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _spread(mean: float, std: float | None, low: float) -> str:
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f} (min {low:.3f})"


def _recipe_cell(row: dict) -> str:
    if row["recipe"] == "reference":
        return "histograms, C 0.1"
    settings = row["settings"]
    source = "study" if row["recipe"] == "study" else f"train_{row['dim']}"
    schedule = f"lr {settings['lr']:g} {settings['lr_schedule']}, batch {settings['batch_size']}"
    return f"{source}: {schedule}, {settings['epochs']} ep"


def _fewer_seeds(row_seeds: list[int], seeds: list[int]) -> str:
    """`` (seed 42 only)`` for a CNN row run for fewer training seeds than the table; empty otherwise (and
    for the reference, which has none)."""
    if not row_seeds or len(row_seeds) == len(seeds):
        return ""
    if len(row_seeds) == 1:
        return f" (seed {row_seeds[0]} only)"
    return f" (seeds {row_seeds[0]}-{row_seeds[-1]} only)"


def _localisation_cell(row: dict) -> str:
    test, oof = row.get("localisation_test_mean"), row.get("localisation_oof_mean")
    if test is None and oof is None:
        return "-"
    return " / ".join("-" if v is None else f"{v:.2f}" for v in (test, oof))


def markdown_table(
    rows: list[dict], *, cohort_size: int, test_size: int, folds: int, seeds: list[int]
) -> str:
    """The aggregated table (one line per row of ``rows``) with a short header.

    Args:
        rows: aggregated rows from :func:`aggregate`.
        cohort_size: patients in the split table.
        test_size: patients held out for test.
        folds: cross-validation folds K.
        seeds: the training seeds of the CNN rows.
    """
    over = "" if len(seeds) == 1 else " (mean ± std over seeds, min)"
    held_out_header = "[95% CI]" if len(seeds) == 1 else "(mean ± std over seeds, min)"
    seeds_text = f"training seed {seeds[0]}" if len(seeds) == 1 else f"training seeds {seeds[0]}-{seeds[-1]}"
    lines = [
        f"Cohort: {cohort_size} patients, {test_size} held out for test; {folds} fold models per CNN "
        f"and {seeds_text}.",
        "",
        "CV AUC out-of-fold: pooled over the training patients, each scored by the fold model that left "
        "it out. Fold AUC: per fold model (pooled over seeds). Held-out AUC: the mean of the fold models "
        "that learned (all if none did) on the test split"
        + (" [95% bootstrap CI]." if len(seeds) == 1 else "; mean ± std over seeds (min).")
        + " Localisation: the share of metastasis patients whose strongest evidence lies inside a true "
        "metastasis (radius + 5 mm), held-out / out-of-fold (mean over seeds; - for models without "
        "evidence maps). Not learned: fold models that do not separate their training patients. "
        "CPU s: user + system, "
        "loader workers included, summed over seeds. The histogram reference is deterministic (one run; "
        "refitted on the whole training split for the held-out column)."
        + (
            ""
            if len(seeds) == 1
            else " A row marked with fewer seeds (`@N` in `--models`) shows those seeds only; with one seed, "
            "its held-out AUC with the 95% bootstrap CI."
        ),
        "",
        f"| model | recipe | input shape | CV AUC out-of-fold{over} | fold AUC mean ± std "
        f"| held-out AUC {held_out_header} | localisation | models not learned | CPU s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["test_auc_ci95"] is not None:
            low, high = row["test_auc_ci95"]
            held_out = f"{row['test_auc_mean']:.3f} [{low:.3f}, {high:.3f}]"
        else:
            held_out = _spread(row["test_auc_mean"], row["test_auc_std"], row["test_auc_min"])
        fold_std = "" if row["fold_auc_std"] is None else f" ± {row['fold_auc_std']:.3f}"
        reference = row["recipe"] == "reference"
        not_learned = "-" if reference else f"{row['not_learned']}/{row['fold_models']}"
        shape = "[" + ",".join(str(n) for n in row["input_shape"]) + "]"
        lines.append(
            f"| {row['row']}{_fewer_seeds(row['seeds'], seeds)} | {_recipe_cell(row)} | {shape} | "
            f"{_spread(row['cv_auc_oof_mean'], row['cv_auc_oof_std'], row['cv_auc_oof_min'])} | "
            f"{row['fold_auc_mean']:.3f}{fold_std} | {held_out} | {_localisation_cell(row)} | "
            f"{not_learned} | {row['cpu_seconds']} | {row['wall_seconds']} |"
        )
    return "\n".join(lines) + "\n"


def _fold_record(result: FoldResult) -> dict:
    """A fold model as the benchmark JSON records it, in a scored run and in one still training."""
    return {
        "fold": result.fold,
        "auc": result.auc,
        "accuracy": result.accuracy,
        "learned": result.learned,
        "attempts": result.attempts,
        "train_loss": result.train_loss,
        "init_seed": result.seed,
    }


def _unfinished_run(job: Job, key: str, folds: dict[int, TrainedFold], fold_models: int) -> dict:
    """What a run that is still training has so far: its finished fold models (not scored as a run: no
    out-of-fold or held-out AUC before all K are there)."""
    results = [folds[fold] for fold in sorted(folds)]
    return {
        "row": job.spec.name,
        "seed": job.seed,
        "job_key": key,
        "fold_models": fold_models,
        "folds": [
            _fold_record(fold.result) | {"cpu_seconds": round(fold.cpu_seconds, 1)} for fold in results
        ],
        "cpu_seconds": round(sum(trained.cpu_seconds for trained in results), 1),
    }


def _unfinished_line(run: dict) -> str:
    """One line of the partial table for a run still training."""
    folds = run["folds"]
    aucs = ", ".join(f"{fold['auc']:.2f}" for fold in folds)
    losses = ", ".join(f"{fold['train_loss']:.3f}" for fold in folds)
    stuck = sum(not fold["learned"] for fold in folds)
    trainings = sum(fold["attempts"] for fold in folds)
    plural = "s" if trainings != 1 else ""
    return (
        f"{run['row']}, seed {run['seed']}: {len(folds)} of {run['fold_models']} fold models trained "
        f"(fold AUC {aucs}; training loss {losses}; not learned {stuck}/{len(folds)}; {trainings} "
        f"training{plural}, {run['cpu_seconds']:,.0f} CPU s)"
    )


def _reference_row(run: dict) -> dict:
    """The histogram reference in the shape of an aggregated row (one run)."""
    return aggregate([run]) | {"seeds": []}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m metastases.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument(
        "--build",
        type=Path,
        metavar="DIR",
        help="build the benchmark cohort and its arrays under DIR first (e.g. data/benchmark), "
        "then benchmark on them; --data-*, --splits, --out and --json default to DIR",
    )
    parser.add_argument(
        "--patients", type=int, default=BENCHMARK_PATIENTS, help="with --build (default: %(default)s)"
    )
    parser.add_argument(
        "--cohort-seed",
        type=int,
        default=BENCHMARK_COHORT_SEED,
        help="demo-cohort generator seed, with --build (default: %(default)s)",
    )
    parser.add_argument(
        "--reuse-data",
        action="store_true",
        help="with --build: keep DIR's arrays and split if present instead of rebuilding them",
    )
    parser.add_argument("--workers", type=int, default=2, help="parallel processes for --build")
    parser.add_argument("--data-2d", type=Path, help="2D arrays (default: data/processed/2d)")
    parser.add_argument("--data-3d", type=Path, help="3D arrays (default: data/processed/3d)")
    parser.add_argument("--splits", type=Path, help="split table (default: data/splits.csv)")
    parser.add_argument(
        "--raw-dir",
        type=Path,
        default=Path("data/raw"),
        help="lesions.csv for localisation (without --build)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="ROW",
        default=list(DEFAULT_ROWS),
        help="CNN rows in table order: NAME (params.yaml's train_<dim> recipe, model swapped) or "
        "NAME:seed (the original study's recipe: Adam lr 1e-4 constant, batch 10, 30 epochs 2D / "
        "20 epochs 3D, weight decay, noise and intensity shift 0); either followed by @N trains that "
        "row for the first N training seeds only (a slow row measured once: @1) (default: %(default)s)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="training seeds per CNN row: params' seed, seed+1, ...; the table reports mean ± std "
        "over them (default: %(default)s)",
    )
    parser.add_argument(
        "--epochs", type=int, help="epochs for every CNN row, both recipes (default: from the recipe)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads for every CNN (default: from params)"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="fold models trained at once, one process each (default: 1)"
    )
    parser.add_argument("--out", type=Path, help="markdown table (default: reports/benchmark.md)")
    parser.add_argument("--json", type=Path, help="runs and rows as JSON (default: reports/benchmark.json)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the runs saved in --json by an earlier, possibly interrupted, benchmark, and the fold "
        "models it saved beside it, when their row, seed, settings, data and code are the same (the table "
        "and JSON are rewritten after every run, each fold model is saved as it finishes)",
    )
    parser.add_argument(
        "--runs-from",
        type=Path,
        nargs="+",
        default=[],
        metavar="JSON",
        help="also reuse the runs saved in these benchmark JSONs (other sittings or machines, same arrays "
        "and code) when their row, seed, settings and data are the same",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    for option in ("epochs", "threads", "jobs", "seeds"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1, got {getattr(args, option)}")
    specs = [parse_row(text) for text in args.models]  # an unknown name fails before hours of work
    if len({spec.name for spec in specs}) < len(specs):
        parser.error(f"--models names a row twice: {' '.join(args.models)}")
    for text, spec in zip(args.models, specs, strict=True):
        if spec.seeds is not None and spec.seeds > args.seeds:
            parser.error(f"--models {text}: {spec.seeds} seeds asked but --seeds is {args.seeds}")
    seed = shared_seed(args.params)
    base = train_sections(args.params)
    evaluate = section(EvaluateParams, "evaluate", args.params)
    if args.build is not None:
        data = BenchmarkData(args.build)
        ready = all((data.arrays(dim) / "index.csv").is_file() for dim in ("2d", "3d"))
        if not (args.reuse_data and ready and data.splits.is_file()):
            build_benchmark_data(
                data, args.params, patients=args.patients, cohort_seed=args.cohort_seed, workers=args.workers
            )
        defaults = {
            "data_2d": data.arrays("2d"),
            "data_3d": data.arrays("3d"),
            "splits": data.splits,
            "out": data.root / "benchmark.md",
            "json": data.root / "benchmark.json",
        }
    else:
        defaults = {
            "data_2d": Path("data/processed/2d"),
            "data_3d": Path("data/processed/3d"),
            "splits": Path("data/splits.csv"),
            "out": Path("reports/benchmark.md"),
            "json": Path("reports/benchmark.json"),
        }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    cohorts = {
        "2d": load_cohort(args.data_2d, args.splits, "2d"),
        "3d": load_cohort(args.data_3d, args.splits, "3d"),
    }
    seeds = [seed + i for i in range(args.seeds)]
    reference = histogram_reference(cohorts["3d"], evaluate, seed)
    lesions = read_lesions(args.build / "raw" if args.build is not None else args.raw_dir)
    jobs: list[Job] = []
    row_jobs: list[range] = []  # the jobs of each row, in seed order
    for spec in specs:
        start = len(jobs)
        jobs += [
            Job(
                cohort=cohorts[spec.dim],
                params=row_params(spec, base, epochs=args.epochs, threads=args.threads),
                spec=spec,
                seed=training_seed,
                evaluate=evaluate,
                bootstrap_seed=seed,
                lesions=lesions,
            )
            for training_seed in seeds[: spec.seeds]
        ]
        row_jobs.append(range(start, len(jobs)))
    data_id = data_identity(args.splits, args.data_2d, args.data_3d)
    keys = [job_key(job, data_id) for job in jobs]
    saved = runs_from(args.runs_from) | (previous_runs(args.json) if args.resume else {})
    done: dict[int, dict] = {index: saved[key] for index, key in enumerate(keys) if key in saved}
    todo = [index for index in range(len(jobs)) if index not in done]
    if done:
        sources = ", ".join(str(path) for path in ([args.json] if args.resume else []) + args.runs_from)
        log.info("%d of %d runs taken from %s, %d to run", len(done), len(jobs), sources, len(todo))
    splits = cohorts["2d"].splits
    table_shape = {
        "cohort_size": len(splits),
        "test_size": int((splits["split"] == "test").sum()),
        "folds": len(cohorts["2d"].folds),
        "seeds": seeds,
    }

    def save() -> str:
        """Write the table of every row whose runs are all done (all rows at the end)."""
        rows = [_reference_row(reference)]
        for indices in row_jobs:
            if all(i in done for i in indices):
                rows.append(aggregate([done[i] for i in indices]))
        complete = len(done) == len(jobs)
        table = markdown_table(rows, **table_shape)  # type: ignore[arg-type]
        unfinished = [
            _unfinished_run(jobs[i], keys[i], trained[i], len(fold_files[i]))
            for i in sorted(trained)
            if trained[i]
        ]
        if not complete:
            table += (
                f"\nPartial: {len(done)} of {len(jobs)} (row, seed) runs done; rows with a seed still to "
                "run are not shown. `--resume` continues from here.\n"
            )
            table += "".join(f"\n- {_unfinished_line(run)}" for run in unfinished) + (
                "\n" if unfinished else ""
            )
        runs = [reference] + [done[i] | {"job_key": keys[i]} for i in sorted(done)]
        write_json(
            args.json,
            {
                "seeds": seeds, "bootstrap_seed": seed, "complete": complete, "rows": rows, "runs": runs,
                "unfinished": unfinished,
            },
        )  # fmt: skip
        write_text(args.out, table)
        return table

    fold_dir = args.json.with_name(f"{args.json.stem}-folds")
    trained: dict[int, dict[int, TrainedFold]] = {index: {} for index in todo}
    fold_files: dict[int, list[Path]] = {}
    tasks: list[FoldTask] = []
    for index in todo:
        job = jobs[index]
        run_tasks = fold_tasks(
            job.cohort,
            job.params,
            seed=job.seed,
            run=index,
            files=fold_dir / keys[index],
        )
        fold_files[index] = [task.path for task in run_tasks]
        for task in run_tasks:
            saved_fold = load_fold(task) if args.resume else None
            if saved_fold is None:
                tasks.append(task)
            else:
                trained[index][task.job.fold] = saved_fold
    reused = sum(len(folds) for folds in trained.values())
    if reused:
        log.info("%d fold models taken from %s, %d to train", reused, fold_dir, len(tasks))

    def fold_done(task: FoldTask, fold: TrainedFold) -> None:
        trained[task.run][task.job.fold] = fold
        job, result = jobs[task.run], fold.result
        log.info(
            "%s seed %d, fold %d: AUC %.3f, %s after %d attempt(s), %.0f CPU s; %d of %d fold models",
            job.spec.name, job.seed, result.fold, result.auc, "learned" if result.learned else "NOT learned",
            result.attempts, fold.cpu_seconds, len(trained[task.run]), len(fold_files[task.run]),
        )  # fmt: skip
        if len(trained[task.run]) == len(fold_files[task.run]):
            finish(task.run)
        else:
            save()  # the finished fold models of unfinished runs, in the JSON and under the table

    def finish(index: int) -> None:
        """Score a run whose fold models are all trained, save it, and drop its fold files."""
        run = done[index] = score_run(jobs[index], list(trained.pop(index).values()))
        save()
        log.info(
            "%s seed %d: out-of-fold AUC %.3f, held-out AUC %.3f, not learned %d/%d",
            run["row"], run["seed"], run["cv_auc_oof"], run["test_auc"], run["not_learned"],
            run["fold_models"],
        )  # fmt: skip
        for path in fold_files[index]:
            path.unlink(missing_ok=True)

    for index in [i for i in todo if len(trained[i]) == len(fold_files[i])]:
        finish(index)
    if reused:
        save()
    run_folds(tasks, args.jobs, fold_done)
    if fold_dir.is_dir() and not any(fold_dir.iterdir()):  # only now: no fold process is writing there
        fold_dir.rmdir()
    table = save()
    log.info("benchmark table written to %s\n%s", args.out, table)


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
