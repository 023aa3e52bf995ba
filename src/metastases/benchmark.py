"""Compare baseline, default and trivial models on one cohort: CV AUC mean ± std and held-out AUC with CI.

From scratch, on a larger demo cohort of its own (what ``make benchmark`` runs)::

    python -m metastases.benchmark --build data/benchmark

builds ``data/benchmark/{raw,interim,2d,3d}`` and ``splits.csv`` (240 patients, generator seed 11,
ingest/split/array params from params.yaml) and writes ``data/benchmark/benchmark.{md,json}``. On
arrays that already exist::

    python -m metastases.benchmark --data-2d DIR/2d --data-3d DIR/3d --splits DIR/splits.csv --out T.md

Every CNN is cross-validated over the training folds (epochs from ``cross_validate``), then trained on
the whole training split (epochs from ``train_<dim>``) and scored on the test split; ``--epochs N``
uses N for both, for every CNN alike; ``--jobs 2`` benchmarks two models at once (one process each;
give each ``--threads 1`` on a 2-core machine). The trivial reference is a logistic regression on
per-sequence intensity histograms; if it scores like the CNNs, the cohort is too easy to tell the
models apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from metastases.arrays import build_arrays, read_manifest
from metastases.atomic import write_csv, write_json, write_text
from metastases.cli import configure_logging, run_stage
from metastases.demo_cohort.cohort import build_cohort
from metastases.evaluation.metrics import auc, bootstrap_auc_ci, metrics_at
from metastases.ingest import ingest_cohort
from metastases.models import model_dim
from metastases.params import (
    CLASSES,
    CrossValidateParams,
    EvaluateParams,
    IngestParams,
    SplitParams,
    TrainParams,
    VolumeParams,
    section,
    shared_seed,
    train_sections,
)
from metastases.splits import make_splits
from metastases.training.cohort import Cohort, load_cohort
from metastases.training.crossval import cross_validate
from metastases.training.dataset import PatientArrays
from metastases.training.loop import fit, make_loader, predict
from metastases.training.runtime import configure_torch, resolve_device

log = logging.getLogger(__name__)

HISTOGRAM_BINS = np.linspace(-3.0, 5.0, 33)
"""Bin edges in standard deviations of the z-scored volume (values outside fall in the end bins)."""

BENCHMARK_PATIENTS = 240
BENCHMARK_COHORT_SEED = 11
"""The benchmark cohort: same generator as the demo cohort (60 patients, seed 7), another seed."""


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

    def arrays(self, layout: str) -> Path:
        return self.root / layout


def build_benchmark_data(
    data: BenchmarkData, params_path: str | Path, patients: int, cohort_seed: int, workers: int
) -> None:
    """Demo cohort -> ingest -> split -> 2D and 3D arrays under ``data.root``, as the pipeline's stages do.

    Uses the ``ingest``, ``split``, ``slice_2d`` and ``stack_3d`` sections and the shared seed of
    ``params_path``, so the benchmark sees the same geometry as ``make run``; every step replaces its
    previous output.
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
    for layout, name in (("2d", "slice_2d"), ("3d", "stack_3d")):
        params = section(VolumeParams, name, params_path)
        build_arrays(data.interim, data.arrays(layout), params, layout, workers=workers)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
    started, cpu = time.perf_counter(), _cpu_seconds()
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
        "epochs": None,
        "cpu_seconds": round(_cpu_seconds() - cpu, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def benchmark_model(
    cohort: Cohort, params: TrainParams, cv_epochs: int, evaluate: EvaluateParams, seed: int
) -> dict:
    """CV AUC over the folds and held-out AUC (trained on the whole training split) for one CNN."""
    started, cpu = time.perf_counter(), _cpu_seconds()
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
        "epochs": f"{cv_epochs}/{params.epochs}",
        "cpu_seconds": round(_cpu_seconds() - cpu, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "data_wait_share": round(fitted.timing.data_wait_share, 3),
    }


Job = tuple[Cohort, TrainParams, int, EvaluateParams, int, bool]
"""One CNN's benchmark: cohort, params, CV epochs, evaluation params, seed, verbose logging."""


def _benchmark_job(job: Job) -> dict:
    """:func:`benchmark_model` in a worker process of ``--jobs``."""
    cohort, params, cv_epochs, evaluate, seed, verbose = job
    configure_logging(verbose)
    if multiprocessing.get_start_method() == "spawn" and "fork" in multiprocessing.get_all_start_methods():
        # a spawned process spawns its loader workers too, re-importing torch every epoch; forking
        # them, as a single-process run does, keeps the timings of --jobs and serial runs comparable
        multiprocessing.set_start_method("fork", force=True)
    row = benchmark_model(cohort, params, cv_epochs, evaluate, seed)
    log.info("%s: %s", params.model, row)
    return row


def run_jobs(jobs: list[Job], workers: int) -> list[dict]:
    """Benchmark rows in the order of ``jobs``, ``workers`` models at a time (1: in this process)."""
    if workers == 1:
        return [_benchmark_job(job) for job in jobs]
    # spawn: a forked copy of a process that has already run torch can deadlock in its thread pools
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(_benchmark_job, jobs))


def markdown_table(rows: list[dict], cohort_size: int, test_size: int) -> str:
    lines = [
        f"Cohort: {cohort_size} patients, {test_size} held out for test.",
        "",
        "Epochs: cross-validation / final training. CPU s: user + system, loader workers included.",
        "",
        "| model | input | epochs | CV AUC (mean ± std) | held-out AUC [95% CI] | held-out accuracy "
        "| CPU s | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = row["test_auc_ci95"]
        lines.append(
            f"| {row['model']} | {row['dim']} | {row['epochs'] or '-'} | "
            f"{row['cv_auc_mean']:.3f} ± {row['cv_auc_std']:.3f} | "
            f"{row['test_auc']:.3f} [{low:.3f}, {high:.3f}] | {row['accuracy']:.3f} | "
            f"{row['cpu_seconds']} | {row['wall_seconds']} |"
        )
    return "\n".join(lines) + "\n"


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
        "--models",
        nargs="+",
        default=["alexnet2d", "cnn2d", "lenet3d", "cnn3d"],
        help="registered model names (default: %(default)s)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help="cross-validation and final-training epochs for every CNN (default: from params)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads for every CNN (default: from params)"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="models benchmarked at once, one process each (default: 1)"
    )
    parser.add_argument("--out", type=Path, help="markdown table (default: reports/benchmark.md)")
    parser.add_argument("--json", type=Path, help="the same as JSON (default: reports/benchmark.json)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    for option in ("epochs", "threads", "jobs"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1, got {getattr(args, option)}")
    for name in args.models:
        model_dim(name)  # an unknown name fails before hours of work
    seed = shared_seed(args.params)
    base = train_sections(args.params)
    cv_params = section(CrossValidateParams, "cross_validate", args.params)
    evaluate = section(EvaluateParams, "evaluate", args.params)
    if args.build is not None:
        data = BenchmarkData(args.build)
        ready = all((data.arrays(layout) / "index.csv").is_file() for layout in ("2d", "3d"))
        if not (args.reuse_data and ready and data.splits.is_file()):
            build_benchmark_data(data, args.params, args.patients, args.cohort_seed, args.workers)
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
    rows = [histogram_reference(cohorts["3d"], evaluate, seed)]
    jobs: list[Job] = []
    for name in args.models:
        dim = model_dim(name)
        params = dataclasses.replace(base[dim], model=name)
        epochs = cv_params.epochs_2d if dim == "2d" else cv_params.epochs_3d
        if args.epochs is not None:
            params, epochs = dataclasses.replace(params, epochs=args.epochs), args.epochs
        if args.threads is not None:
            params = dataclasses.replace(params, threads=args.threads)
        jobs.append((cohorts[dim], params, epochs, evaluate, seed, args.verbose))
    rows += run_jobs(jobs, args.jobs)
    splits = cohorts["2d"].splits
    table = markdown_table(rows, len(splits), int((splits["split"] == "test").sum()))
    write_json(args.json, rows)
    write_text(args.out, table)
    log.info("benchmark table written to %s\n%s", args.out, table)


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
