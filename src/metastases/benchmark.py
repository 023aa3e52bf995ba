"""The benchmark and the learning curve: the stages of ``benchmark/dvc.yaml`` (``make benchmark``).

A run is one model, recipe, training seed and number of training patients: the pipeline's own
:func:`~metastases.training.folds.train_folds` trains K fold models on a nested stratified subset of the
benchmark cohort's training split (:func:`~metastases.splits.training_subset`); they are scored out of
fold and, as the mean of those that learned, on the held-out patients (the same for every run), with
the pointing game where the model has evidence maps. Each run writes one JSON file; DVC decides what
runs again (code, params or data changed) and keeps what finished. :func:`aggregate` turns the runs
into the benchmark table (every training patient) and the learning curve. The recipe ``study`` is the
original study's optimiser and augmentation settings; ``params`` is ``train_<dim>`` of params.yaml.
A histogram logistic regression is the trivial reference: a cohort it separates as well as the CNNs is
too easy to tell them apart.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from metastases.arrays import load_geometry
from metastases.errors import UserError
from metastases.evaluation.evidence import pointing_game
from metastases.evaluation.held_out import explain
from metastases.evaluation.metrics import auc, bootstrap_auc_ci
from metastases.evaluation.out_of_fold import out_of_fold_evidence
from metastases.params import CLASSES, EvaluateParams, TrainingParams
from metastases.plotting import save_figure
from metastases.training.checkpoint import Ensemble, FoldModel
from metastases.training.dataset import PatientArrays
from metastases.training.folds import train_folds
from metastases.training.inputs import Cohort
from metastases.training.loop import make_loader, predict
from metastases.training.runtime import configure_torch, resolve_device

RECIPES = ("params", "study")

STUDY_RECIPE: dict[str, Any] = {
    "lr": 1e-4, "lr_schedule": "constant", "batch_size": 10, "weight_decay": 0.0, "noise_std": 0.0,
    "intensity_shift": 0.0, "rotate_degrees": 0.0, "scale": 0.0, "restarts": 0,
}  # fmt: skip
"""The original study's optimiser and augmentation settings (it flipped left-right and added noise on raw
intensities, nothing else) and its single training per model: a fold model at chance is counted, not
retried. Epochs: :data:`STUDY_EPOCHS`."""

STUDY_EPOCHS = {"2d": 30, "3d": 20}

HISTOGRAM_BINS = np.linspace(-3.0, 5.0, 33)
"""Bin edges in standard deviations of the z-scored volume (values outside fall in the end bins)."""

REFERENCE = "histogram logistic regression"


def row_params(base: TrainingParams, model: str, recipe: str) -> TrainingParams:
    """``train_<dim>`` with ``model`` swapped in and, for the ``study`` recipe, the study's settings."""
    params = dataclasses.replace(base, model=model)
    if recipe == "study":
        params = dataclasses.replace(params, epochs=STUDY_EPOCHS[base.dim], **STUDY_RECIPE)
    return params


def training_subset(splits: pd.DataFrame, patients: int, folds: int, seed: int) -> pd.DataFrame:
    """The first ``patients`` training patients of a seeded order per class, in K new stratified folds;
    the test patients unchanged. Subsets of one ``seed`` are nested (24 of the 48, 48 of the 96, ...) and
    keep the training split's class shares: a learning curve's points differ only in how many patients
    trained, never in which are held out.
    """
    train = splits[splits["split"] == "train"].sort_values("patient")
    if not 0 < patients <= len(train):
        raise UserError(f"{patients} patients asked for, but the training split holds {len(train)}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label, name in enumerate(CLASSES):
        part = train[train["label"] == label]
        take = round(patients * len(part) / len(train))
        if take < folds:
            raise UserError(
                f"{patients} patients give {take} {name} for {folds} folds (one per fold at least); "
                "ask for more patients or lower split.folds"
            )
        chosen.append(part.iloc[rng.permutation(len(part))[:take]])
    subset = pd.concat(chosen).sort_values("patient").reset_index(drop=True)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold = np.empty(len(subset), dtype=int)
    for index, (_, validation) in enumerate(splitter.split(subset["patient"], subset["label"])):
        fold[validation] = index
    result = pd.concat([subset.assign(fold=fold), splits[splits["split"] == "test"]])
    return result.sort_values("patient").reset_index(drop=True)[["patient", "label", "split", "fold"]]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (fold processes, workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _held_out(labels: np.ndarray, scores: np.ndarray, evaluate: EvaluateParams, seed: int) -> dict:
    low, high = bootstrap_auc_ci(labels, scores, evaluate.bootstrap, evaluate.ci, seed)
    return {"test_auc": auc(labels, scores), "test_auc_ci_low": low, "test_auc_ci_high": high}


def histogram_features(cohort: Cohort, patients: pd.DataFrame) -> np.ndarray:
    """Per-sequence intensity histograms of the stored arrays, ``[patients, 3 * 32]``."""
    rows = []
    for patient in patients["patient"]:
        sequences = np.asarray(np.load(cohort.path(patient), mmap_mode="r"), dtype=np.float32).reshape(3, -1)
        clipped = np.clip(sequences, HISTOGRAM_BINS[0], HISTOGRAM_BINS[-1])
        rows.append(np.concatenate([np.histogram(s, HISTOGRAM_BINS)[0] / s.size for s in clipped]))
    return np.stack(rows)


def histogram_reference(cohort: Cohort, evaluate: EvaluateParams, seed: int) -> dict:
    """Logistic regression on intensity histograms: cross-validated over the folds, then refitted on the
    whole training split for the held-out patients. Deterministic: one run."""
    started, cpu = time.perf_counter(), cpu_seconds()
    train, test = cohort.splits[cohort.splits["split"] == "train"], cohort.part("test")
    features, labels = histogram_features(cohort, train), train["label"].to_numpy()
    folds = train["fold"].to_numpy()
    out_of_fold = np.zeros(len(train))
    for fold in cohort.folds:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        model.fit(features[folds != fold], labels[folds != fold])
        out_of_fold[folds == fold] = model.predict_proba(features[folds == fold])[:, 1]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(features, labels)
    scores = model.predict_proba(histogram_features(cohort, test))[:, 1]
    return {
        "row": f"{REFERENCE} (trivial reference)", "model": REFERENCE, "recipe": "reference", "seed": None,
        "patients": len(train), "oof_auc": auc(labels, out_of_fold), "not_learned": 0, "fold_models": 0,
        **_held_out(test["label"].to_numpy(), scores, evaluate, seed),
        "cpu_seconds": round(cpu_seconds() - cpu, 1), "wall_seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def _localisation(ensemble: Ensemble, cohort: Cohort, lesions: pd.DataFrame | None, batch: int) -> dict:
    """The pointing game held out (the ensemble) and out of fold; None where it cannot be scored."""
    test, device = cohort.part("test"), resolve_device("cpu")
    held_out = None if lesions is None else explain(ensemble, cohort.array_dir, test, device, batch)
    out_of_fold = None if held_out is None else out_of_fold_evidence(ensemble, cohort.array_dir, batch)
    if held_out is None or out_of_fold is None:
        return {"localisation_test": None, "localisation_oof": None}
    geometry = load_geometry(cohort.array_dir)
    labels = dict(zip(cohort.splits["patient"].astype(str), cohort.splits["label"].astype(int), strict=True))
    return {
        "localisation_test": pointing_game(held_out, labels, geometry, lesions).localisation,
        "localisation_oof": pointing_game(out_of_fold, labels, geometry, lesions).localisation,
    }


def run_benchmark(
    cohort: Cohort,
    params: TrainingParams,
    *,
    recipe: str,
    seed: int,
    evaluate: EvaluateParams,
    bootstrap_seed: int,
    lesions: pd.DataFrame | None,
) -> dict:
    """Train the K fold models of one run and score them; returns the run's record.

    Args:
        cohort: arrays and the (subset) split: training patients in K folds, the held-out patients.
        params: the row's training params (:func:`row_params`).
        recipe: ``params`` or ``study``, recorded.
        seed: the training seed (fold initialisations, augmentation); the bootstrap keeps the shared one.
        evaluate: bootstrap resamples and coverage of the held-out AUC interval.
        bootstrap_seed: the seed of the bootstrap (the shared seed of params.yaml, the same for every run).
        lesions: lesion truth of the cohort, for the pointing game; None: not scored.
    """
    started, cpu = time.perf_counter(), cpu_seconds()
    device = resolve_device(params.device)
    configure_torch(params.deterministic, params.threads, device)
    trained = train_folds(cohort, params, seed, device)
    test = cohort.part("test")
    folds = [FoldModel(f.fold, f.model, f.learned, f.train_patients, f.val_patients) for f in trained.folds]
    shape = cohort.sample_shape(test)
    ensemble = Ensemble(params.model, params.dim, shape, folds, trained.out_of_fold, meta={})
    loader = make_loader(PatientArrays(cohort.array_dir, test), params.batch_size, False, seed, 0, device)
    scores = ensemble.mean_score({f.fold: predict(f.model.to(device), loader, device)[0] for f in folds})
    oof = trained.out_of_fold
    return {
        "row": f"{params.model} (study recipe)" if recipe == "study" else params.model,
        "model": params.model, "recipe": recipe, "dim": params.dim, "seed": seed,
        "patients": len(oof), "input_shape": list(shape), "epochs": params.epochs, "lr": params.lr,
        "oof_auc": auc(oof["label"], oof["score"]), "fold_aucs": [f.auc for f in trained.folds],
        "fold_models": len(folds), "not_learned": sum(not f.learned for f in folds),
        **_held_out(test["label"].to_numpy(), scores, evaluate, bootstrap_seed),
        **_localisation(ensemble, cohort, lesions, params.batch_size),
        "cpu_seconds": round(cpu_seconds() - cpu, 1), "wall_seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def aggregate(runs: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The benchmark table (every training patient: the largest run of each row) and the learning curve
    (per row and number of patients): mean, std (ddof 1) and min over seeds, seeds, not learned, CPU s."""
    frame = pd.DataFrame(runs)
    keys = ["row", "patients"]
    stats = {"oof_auc": ["mean", "std", "min"], "test_auc": ["mean", "std", "min"], "seed": "count",
             "not_learned": "sum", "fold_models": "sum", "cpu_seconds": "sum"}  # fmt: skip
    curve = frame.groupby(keys, sort=False).agg(stats)
    curve.columns = [
        f"{name}_{stat}" if stat not in ("sum", "count") else name for name, stat in curve.columns
    ]
    curve = curve.rename(columns={"seed": "seeds"}).reset_index()
    one = frame.groupby(keys, sort=False).first()[["test_auc_ci_low", "test_auc_ci_high"]].reset_index()
    located = frame.groupby(keys, sort=False)[["localisation_oof", "localisation_test"]].mean().reset_index()
    curve = curve.merge(one, on=keys).merge(located, on=keys)
    order = {row: index for index, row in enumerate(dict.fromkeys(frame["row"]))}  # rows as first given
    curve = curve.sort_values(keys, key=lambda c: c.map(order) if c.name == "row" else c, ignore_index=True)
    largest = curve.groupby("row", sort=False)["patients"].transform("max") == curve["patients"]
    return curve[largest].reset_index(drop=True), curve


def _cell(mean: float, std: float, low: float, seeds: int) -> str:
    return f"{mean:.3f}" if seeds < 2 else f"{mean:.3f} ± {std:.3f} (min {low:.3f})"


def markdown_table(table: pd.DataFrame, curve: pd.DataFrame, *, commit: str, date: str) -> str:
    """The benchmark table and the learning curve's table, with the commit and date they came from."""
    lines = [
        f"Benchmark of commit `{commit}`, {date}. Mean ± std over training seeds (min); with one seed the "
        "held-out AUC has its 95% bootstrap CI. Localisation: share of metastasis patients whose strongest "
        "evidence lies in a true metastasis, out of fold / held out. Not learned: fold models that do not "
        "separate their own training patients. CPU s: all seeds.",
        "",
        "| model | patients | seeds | out-of-fold AUC | held-out AUC | localisation | not learned | CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        seeds = int(row["seeds"])
        held_out = _cell(row["test_auc_mean"], row["test_auc_std"], row["test_auc_min"], seeds)
        if seeds < 2:
            held_out += f" [{row['test_auc_ci_low']:.3f}, {row['test_auc_ci_high']:.3f}]"
        located = " / ".join(
            "-" if pd.isna(v) else f"{v:.2f}" for v in row[["localisation_oof", "localisation_test"]]
        )
        lines.append(
            f"| {row['row']} | {row['patients']} | {seeds} | "
            f"{_cell(row['oof_auc_mean'], row['oof_auc_std'], row['oof_auc_min'], seeds)} | {held_out} | "
            f"{located} | {row['not_learned']}/{row['fold_models']} | {row['cpu_seconds']:,.0f} |"
        )
    lines += ["", "Learning curve (out-of-fold / held-out AUC, mean ± std over seeds):", ""]
    sizes = sorted(curve["patients"].unique())
    lines += [
        "| model | " + " | ".join(f"{n} patients" for n in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]
    for name, rows in curve.groupby("row", sort=False):
        by_size = rows.set_index("patients")
        cells = [
            "-" if n not in by_size.index else
            f"{by_size.loc[n, 'oof_auc_mean']:.2f} / {by_size.loc[n, 'test_auc_mean']:.2f}"
            + ("" if by_size.loc[n, "seeds"] < 2 else f" (± {by_size.loc[n, 'oof_auc_std']:.2f})")
            for n in sizes
        ]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_learning_curve(curve: pd.DataFrame, path: Path) -> None:
    """Out-of-fold (solid) and held-out (dashed) AUC against training patients, mean ± std over seeds;
    a row measured at one size is a point."""
    figure, ax = plt.subplots(figsize=(7, 5.5))
    for index, (name, rows) in enumerate(curve.groupby("row", sort=False)):
        colour = f"C{index}"
        for column, style in (("oof_auc", "-o"), ("test_auc", "--s")):
            ax.errorbar(rows["patients"], rows[f"{column}_mean"], yerr=rows[f"{column}_std"].fillna(0),
                        fmt=style, color=colour, capsize=3, alpha=1 if column == "oof_auc" else 0.6,
                        label=f"{name}, {'out of fold' if column == 'oof_auc' else 'held out'}")  # fmt: skip
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(curve["patients"].unique()), [str(n) for n in sorted(curve["patients"].unique())])
    ax.set(xlabel="training patients", ylabel="AUC (mean ± std over seeds)", ylim=(0.3, 1.02),
           title="Learning curve on the benchmark cohort")  # fmt: skip
    # below the axes: inside, it hid the reference's single point at the largest size
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    save_figure(figure, path)
