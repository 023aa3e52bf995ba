"""Training, cross-validation and evaluation on small real arrays: determinism, no leakage, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from metastases.errors import UserError
from metastases.evaluation.held_out import EvaluateOutputs, run_evaluation
from metastases.evaluation.metrics import youden_threshold
from metastases.evaluation.out_of_fold import CrossValidateOutputs, run_cross_validation
from metastases.metrics_file import details_path
from metastases.params import CrossValidateParams, EvaluateParams
from metastases.training.checkpoint import load_ensemble
from metastases.training.dataset import PatientArrays
from metastases.training.folds import chance_loss, has_learned
from metastases.training.inputs import load_cohort
from metastases.training.stage import TrainOutputs, run_training

sys.path.insert(0, str(Path(__file__).parent))
from params_support import augmentation, committed_params, training_params
from synthetic_arrays import write_cohort

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "epochs": 2, "batch_size": 4, "threads": 1, "num_workers": 0, "device": "cpu",
    "restarts": 0, "parallel_folds": 1,
}  # fmt: skip
PARAMS = {"2d": training_params("2d", **TINY), "3d": training_params("3d", **TINY)}
SEED = 42
SHAPES = {"2d": (60, 32, 32), "3d": (3, 20, 32, 32)}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_cohort(tmp_path_factory.mktemp("cohort"), patients=16, size_2d=32, size_3d=32, folds=3)


def _outputs(root: Path, dim: str) -> TrainOutputs:
    return TrainOutputs(
        model=root / f"models/{dim}.pt",
        metrics=root / f"metrics/train_{dim}.json",
        curves=root / f"plots/train/model_{dim}.csv",
        png=root / f"plots/loss_{dim}.png",
        timing=root / f"metrics/timing/train_{dim}.json",
    )


def _copy_without(cohort: dict[str, Path], root: Path, drop_split: str) -> dict[str, Path]:
    """A copy of the cohort whose ``drop_split`` patients have no arrays at all."""
    splits = pd.read_csv(cohort["splits"], dtype={"patient": str})
    dropped = set(splits.loc[splits["split"] == drop_split, "patient"])
    root.mkdir(parents=True)
    copy = {"splits": root / "splits.csv"}
    shutil.copy(cohort["splits"], copy["splits"])
    for dim in ("2d", "3d"):
        copy[dim] = root / dim
        shutil.copytree(
            cohort[dim], copy[dim], ignore=lambda _, names: [n for n in names if n[:-4] in dropped]
        )
    return copy


def test_augmentation_is_seeded_per_sample_and_epoch(cohort: dict[str, Path]) -> None:
    patients = pd.read_csv(cohort["2d"] / "index.csv", dtype={"patient": str}).head(2)
    dataset = PatientArrays(
        cohort["2d"],
        patients,
        augmentation(flip_horizontal=0.5, flip_vertical=0.5, noise_std=0.1, intensity_shift=0.1),
        seed=3,
    )
    first = dataset[0][0]
    assert first.dtype == torch.float32 and first.shape == (60, 32, 32)
    assert torch.equal(first, dataset[0][0])
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[0][0])
    stored = np.load(cohort["2d"] / f"{patients['patient'][0]}.npy").astype(np.float32)
    plain = PatientArrays(cohort["2d"], patients)[0][0].numpy()
    assert np.array_equal(plain, stored)


def test_flip_and_per_sequence_shift_act_as_specified(cohort: dict[str, Path]) -> None:
    stored = np.load(next(cohort["3d"].glob("*.npy"))).astype(np.float32)
    rng = np.random.default_rng(0)
    flipped = augmentation(flip_horizontal=1.0)(stored, rng).numpy()
    assert np.array_equal(flipped, stored[..., ::-1])
    shifted = augmentation(intensity_shift=0.2)(stored, rng).numpy()
    offsets = (shifted - stored).reshape(3, -1)
    assert np.allclose(offsets, offsets[:, :1], atol=1e-6)  # one offset per sequence
    assert np.all(np.abs(offsets[:, 0]) <= 0.2) and len(set(np.round(offsets[:, 0], 6))) == 3
    noisy = augmentation(noise_std=0.5)(stored, rng).numpy()
    assert (noisy - stored).std() == pytest.approx(0.5, rel=0.05)


def test_training_twice_gives_identical_metrics_and_curves(cohort: dict[str, Path], tmp_path: Path) -> None:
    runs = []
    # the speed-only settings: loader workers, fold processes (auto: one per core), none changes a byte
    for name, workers, folds in (("a", 0, 1), ("b", 0, 1), ("c", 1, 1), ("d", 0, 2), ("e", 2, "auto")):
        params = training_params("2d", **{**TINY, "num_workers": workers, "parallel_folds": folds})
        outputs = _outputs(tmp_path / name, "2d")
        runs.append(run_training(cohort["2d"], cohort["splits"], params, SEED, outputs))
        assert json.loads(details_path(outputs.metrics).read_text()) == runs[-1]
        assert json.loads(outputs.metrics.read_text()) == {"folds_learned": runs[-1]["folds_learned"]}
    assert runs[0] == runs[1] == runs[2] == runs[3] == runs[4]  # same numbers with workers, folds in parallel
    for other in "bcde":
        assert (tmp_path / "a/models/2d.pt").read_bytes() == (tmp_path / other / "models/2d.pt").read_bytes()
    curves = [pd.read_csv(tmp_path / n / "plots/train/model_2d.csv") for n in "abcde"]
    assert all(curves[0].equals(other) for other in curves[1:])
    folds = [f"{kind}_fold{k}" for k in range(3) for kind in ("train", "val")]
    assert list(curves[0].columns) == ["epoch", *folds, "train_loss", "validation_loss", "validation_auc"]
    assert len(curves[0]) == TINY["epochs"]
    assert curves[0]["train_loss"].to_numpy() == pytest.approx(
        curves[0][[f"train_fold{k}" for k in range(3)]].mean(axis=1).to_numpy()
    )
    assert (tmp_path / "a/plots/loss_2d.png").read_bytes().startswith(b"\x89PNG")


def test_the_final_model_is_the_fold_models_of_every_training_patient_and_never_a_test_patient(
    cohort: dict[str, Path], tmp_path: Path
) -> None:
    splits = pd.read_csv(cohort["splits"], dtype={"patient": str})
    test_patients = set(splits.loc[splits["split"] == "test", "patient"])
    train_patients = set(splits["patient"]) - test_patients
    # the training stages run where the test patients' arrays do not even exist
    blind = _copy_without(cohort, tmp_path / "no_test", "test")
    for dim in ("2d", "3d"):
        run_training(blind[dim], blind["splits"], PARAMS[dim], SEED, _outputs(tmp_path, dim))
        ensemble = load_ensemble(tmp_path / f"models/{dim}.pt", PARAMS[dim].model, dim, SHAPES[dim], "train")
        assert len(ensemble.folds) == 3
        for fold in ensemble.folds:
            held_out = set(splits.loc[splits["fold"] == fold.fold, "patient"])
            assert set(fold.val_patients) == held_out
            assert set(fold.train_patients) == train_patients - held_out
        # every training patient trains the final model (K-1 of its K members) and none is scored twice
        assert set().union(*(f.train_patients for f in ensemble.folds)) == train_patients
        assert sorted(ensemble.out_of_fold["patient"]) == sorted(train_patients)
    cv_out = CrossValidateOutputs(
        tmp_path / "metrics/cv.json", tmp_path / "metrics/cv_predictions.csv", tmp_path / "plots"
    )
    models = {dim: tmp_path / f"models/{dim}.pt" for dim in ("2d", "3d")}
    summary = run_cross_validation(models, PARAMS, CrossValidateParams(threshold="youden"), cv_out)
    oof = pd.read_csv(cv_out.predictions, dtype={"patient": str})
    for dim in ("2d", "3d"):
        part = oof[oof["model"] == dim]
        assert set(part["patient"]) == train_patients and len(part) == len(train_patients)
        assert summary[dim]["threshold"] == pytest.approx(youden_threshold(part["label"], part["score"]))
        assert summary[dim]["oof_auc"] == pytest.approx(roc_auc_score(part["label"], part["score"]))
        assert len(summary[dim]["folds"]) == 3
    # evaluation runs where the training patients' arrays do not exist
    sighted = _copy_without(cohort, tmp_path / "only_test", "train")
    results = run_evaluation(
        {"2d": sighted["2d"], "3d": sighted["3d"]}, models,
        sighted["splits"], details_path(cv_out.metrics), PARAMS, EvaluateParams(bootstrap=200), SEED,
        EvaluateOutputs(
            tmp_path / "metrics/evaluate.json", tmp_path / "metrics/predictions.csv", tmp_path / "plots",
            tmp_path / "MODEL_CARD.md",
        ),
    )  # fmt: skip
    written = json.loads((tmp_path / "metrics/details/evaluate.json").read_text())
    assert written == results
    headline = json.loads((tmp_path / "metrics/evaluate.json").read_text())  # what dvc metrics show lists
    assert headline == {dim: {"auc": results[dim]["auc"]} for dim in ("2d", "3d")}  # no lesion truth here
    for dim in ("2d", "3d"):
        block = written[dim]
        expected = {"auc", "auc_ci_low", "auc_ci_high", "accuracy", "balanced_accuracy", "sensitivity"}
        assert expected | {"specificity", "f1", "learned"} <= set(block)
        assert all(not isinstance(v, list) for v in block.values())  # dvc metrics diff drops lists
        assert block["threshold"] == summary[dim]["threshold"]
        roc = pd.read_csv(tmp_path / f"plots/roc/model_{dim}.csv")
        assert list(roc.columns) == ["fpr", "tpr", "threshold"] and np.isfinite(roc.to_numpy()).all()
    predictions = pd.read_csv(tmp_path / "metrics/predictions.csv", dtype={"patient": str})
    assert set(predictions["patient"]) == test_patients
    for png in ("roc.png", "confusion.png", "loss_2d.png", "loss_3d.png"):
        assert (tmp_path / "plots" / png).read_bytes().startswith(b"\x89PNG")


def test_the_held_out_score_is_the_mean_of_the_fold_models_scores(
    cohort: dict[str, Path], tmp_path: Path
) -> None:
    outputs = _outputs(tmp_path, "3d")
    run_training(cohort["3d"], cohort["splits"], PARAMS["3d"], SEED, outputs)
    (tmp_path / "cv.json").write_text('{"3d": {"threshold": 0.5}}')
    evaluate_out = EvaluateOutputs(
        tmp_path / "e.json", tmp_path / "p.csv", tmp_path / "plots", tmp_path / "CARD.md"
    )
    run_evaluation({"3d": cohort["3d"]}, {"3d": outputs.model}, cohort["splits"], tmp_path / "cv.json",
                   PARAMS, EvaluateParams(bootstrap=100), SEED, evaluate_out)  # fmt: skip
    predictions = pd.read_csv(evaluate_out.predictions, dtype={"patient": str})
    # each fold model scores each test patient on its own, by hand: softmax of its logits
    ensemble = load_ensemble(outputs.model, "cnn3d", "3d", SHAPES["3d"], "train-3d")
    by_hand = []
    for patient in predictions["patient"]:
        x = torch.from_numpy(np.load(cohort["3d"] / f"{patient}.npy").astype(np.float32))[None]
        with torch.no_grad():
            member = [float(torch.softmax(f.model(x), dim=1)[0, 1]) for f in ensemble.members]
        by_hand.append(sum(member) / len(member))
    assert predictions["score"].to_numpy() == pytest.approx(np.array(by_hand), abs=1e-6)
    assert len(ensemble.members) >= 1


def test_missing_or_stale_arrays_are_one_line_errors(cohort: dict[str, Path], tmp_path: Path) -> None:
    stale = _copy_without(cohort, tmp_path / "stale", "none")
    splits = pd.read_csv(stale["splits"], dtype={"patient": str})
    victim = splits.loc[splits["split"] == "train", "patient"].iloc[0]
    (stale["2d"] / f"{victim}.npy").unlink()
    outputs = _outputs(tmp_path / "out", "2d")
    with pytest.raises(UserError, match="stale"):
        run_training(stale["2d"], stale["splits"], PARAMS["2d"], SEED, outputs)
    assert not outputs.metrics.exists() and not outputs.model.exists()
    index = pd.read_csv(stale["3d"] / "index.csv", dtype={"patient": str})
    index.iloc[1:].to_csv(stale["3d"] / "index.csv", index=False)
    with pytest.raises(UserError, match="different runs"):
        load_cohort(stale["3d"], stale["splits"], "3d")
    with pytest.raises(UserError, match="expected 4 axes"):
        load_cohort(cohort["2d"], cohort["splits"], "3d").sample_shape(splits.head(2))


def test_a_fold_or_split_with_one_class_is_refused(cohort: dict[str, Path], tmp_path: Path) -> None:
    splits = pd.read_csv(cohort["splits"], dtype={"patient": str})
    one_class_fold = splits.copy()
    one_class_fold.loc[(one_class_fold["split"] == "train") & (one_class_fold["label"] == 1), "fold"] = 0
    one_class_fold.to_csv(tmp_path / "folds.csv", index=False)
    with pytest.raises(UserError, match="training folds without 0 has only normal: add patients"):
        run_training(cohort["2d"], tmp_path / "folds.csv", PARAMS["2d"], SEED, _outputs(tmp_path, "2d"))
    assert not (tmp_path / "models/2d.pt").exists() and not (tmp_path / "metrics").exists()
    with pytest.raises(UserError, match=r"models/3d.pt not found: rerun train-3d"):
        run_cross_validation(
            {"3d": tmp_path / "models/3d.pt"}, PARAMS, CrossValidateParams(),
            CrossValidateOutputs(tmp_path / "cv.json", tmp_path / "cv.csv", tmp_path),
        )  # fmt: skip
    assert not (tmp_path / "cv.json").exists()
    one_class_test = splits[(splits["split"] == "train") | (splits["label"] == 1)]
    one_class_test.to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "cv.json").write_text('{"2d": {"threshold": 0.5}}')
    with pytest.raises(UserError, match="test split has only metastases"):
        run_evaluation(
            {"2d": cohort["2d"]}, {"2d": tmp_path / "none.pt"}, tmp_path / "test.csv", tmp_path / "cv.json",
            PARAMS, EvaluateParams(), SEED,
            EvaluateOutputs(tmp_path / "e.json", tmp_path / "p.csv", tmp_path, tmp_path / "CARD.md"),
        )  # fmt: skip


def test_a_checkpoint_that_does_not_match_params_is_refused(cohort: dict[str, Path], tmp_path: Path) -> None:
    outputs = _outputs(tmp_path, "3d")
    run_training(
        cohort["3d"], cohort["splits"], training_params("3d", **{**TINY, "epochs": 1}), SEED, outputs
    )
    with pytest.raises(UserError, match=r"params ask for 3d 'lenet3d'.*train-3d"):
        load_ensemble(outputs.model, "lenet3d", "3d", (3, 20, 32, 32), "train-3d")
    with pytest.raises(UserError, match="shape"):
        load_ensemble(outputs.model, "cnn3d", "3d", (3, 20, 64, 64), "train-3d")
    outputs.model.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable model checkpoint"):
        load_ensemble(outputs.model, "cnn3d", "3d", (3, 20, 32, 32), "train-3d")


def test_stage_script_prints_one_error_line_and_exits_non_zero(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(committed_params(seed=1, train_2d={"model": "cnn3d"})))
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages/train.py"), "--dim", "2d", "--params", str(params)],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: train_2d.model: 'cnn3d' is a 3d model; train_2d needs a 2d model"
    ]


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_each_default_model_learns_a_blob_present_or_absent(tmp_path: Path, dim: str) -> None:
    """A model that cannot learn at all fails here: 16 easy patients (bright blobs in FLAIR and T1+C in
    the positives), a few epochs, and the default model of params.yaml must separate its training set."""
    easy = write_cohort(tmp_path, patients=16, size_2d=32, size_3d=32, folds=2, contrast=4.0, seed=5)
    params = training_params(
        dim,
        **{
            **TINY,
            "epochs": 12,
            "flip_horizontal": 0.0,
            "noise_std": 0.0,
            "intensity_shift": 0.0,
            "rotate_degrees": 0.0,
            "scale": 0.0,
        },
    )
    cohort = load_cohort(easy[dim], easy["splits"], dim)
    train = cohort.part("train")
    from metastases.training.loop import fit

    fitted = fit(easy[dim], train, train, params, SEED, torch.device("cpu"),
                 cohort.sample_shape(train), "overfit")  # fmt: skip
    assert fitted.epochs[-1].val_auc == 1.0, fitted.epochs[-1]
    assert fitted.epochs[-1].train_loss < 0.5 * np.log(2)


def test_a_model_stuck_at_chance_is_retried_then_flagged_and_left_out(
    cohort: dict[str, Path], tmp_path: Path
) -> None:
    # a learning rate this small cannot move the weights: every fold model stays at chance
    stuck = training_params("3d", **{**TINY, "lr": 1e-9, "restarts": 1})
    outputs = _outputs(tmp_path, "3d")
    metrics = run_training(cohort["3d"], cohort["splits"], stuck, SEED, outputs)
    assert metrics["learned"] is False and metrics["folds_not_learned"] == 3
    assert metrics["restarts_used"] == 3  # one retry per fold, from another initialisation
    assert all(metrics[f"fold{k}"]["attempts"] == 2 and not metrics[f"fold{k}"]["learned"] for k in range(3))
    ensemble = load_ensemble(outputs.model, "cnn3d", "3d", SHAPES["3d"], "train-3d")
    assert not ensemble.learned and len(ensemble.members) == 3  # none learned: all kept, and said so
    cv_out = CrossValidateOutputs(tmp_path / "cv.json", tmp_path / "cv.csv", tmp_path / "plots")
    summary = run_cross_validation({"3d": outputs.model}, PARAMS, CrossValidateParams(), cv_out)
    assert summary["3d"]["learned"] is False and summary["3d"]["folds_not_learned"] == 3


def test_chance_loss_is_the_entropy_of_the_class_prior() -> None:
    assert chance_loss(np.array([0, 1, 0, 1])) == pytest.approx(np.log(2))
    assert chance_loss(np.array([0, 0, 0, 1])) == pytest.approx(-(0.25 * np.log(0.25) + 0.75 * np.log(0.75)))
    balanced = np.array([0, 1])
    assert has_learned(0.5, 0.9, balanced)
    assert not has_learned(0.68, 0.9, balanced)  # ranks, but its scores barely leave the prior
    assert not has_learned(0.3, 0.6, balanced)  # confident, but not separating


def test_a_model_that_separates_its_training_patients_under_heavy_noise_is_not_flagged(
    tmp_path: Path,
) -> None:
    # heavy noise keeps the augmented training loss near or above chance while the model, scored on its
    # own training patients without augmentation, separates them: the loss under augmentation misjudged it
    easy = write_cohort(tmp_path / "easy", patients=16, size_2d=32, size_3d=32, folds=3, contrast=3.0)
    noisy = training_params(
        "3d", **{**TINY, "epochs": 10, "noise_std": 2.0, "rotate_degrees": 30.0, "scale": 0.2}
    )
    metrics = run_training(easy["3d"], easy["splits"], noisy, SEED, _outputs(tmp_path, "3d"))
    folds = [metrics[f"fold{k}"] for k in range(3)]
    assert max(f["train_loss"] for f in folds) >= 0.9 * np.log(2)  # the old criterion would flag it
    assert all(f["fitted_auc"] >= 0.8 and f["learned"] for f in folds)
    assert metrics["restarts_used"] == 0 and metrics["folds_learned"] == 3


def test_the_2d_default_finds_a_lesion_that_sits_in_one_slice_of_twenty(tmp_path: Path) -> None:
    # one or more bright blobs per metastasis patient, each in a single slice: only a model that looks at
    # every slice on its own terms can separate the patients it has not trained on
    cohort = write_cohort(
        tmp_path, patients=24, size_2d=32, size_3d=32, folds=3, contrast=3.0, lesion_slices=1
    )
    params = training_params("2d", **{**TINY, "epochs": 15})
    metrics = run_training(cohort["2d"], cohort["splits"], params, SEED, _outputs(tmp_path, "2d"))
    assert params.model == "cnn2d" and metrics["oof_auc"] >= 0.9
    volume = np.load(next((tmp_path / "processed/3d").glob("mts-*.npy"))).astype(np.float32)
    background = np.load(next((tmp_path / "processed/3d").glob("norma-*.npy"))).astype(np.float32)
    assert (volume[2].max(axis=(1, 2)) > background[2].max() + 1.0).sum() <= 3  # the lesions' slices only


def test_a_flip_through_the_resampling_is_the_exact_mirror_image(cohort: dict[str, Path]) -> None:
    stored = np.load(next(cohort["2d"].glob("*.npy")))
    # a rotation range this small draws a (practically) zero angle, but takes the resampling path
    mirrored = augmentation(flip_horizontal=1.0, flip_vertical=1.0, rotate_degrees=1e-9)(
        stored, np.random.default_rng(0)
    )
    assert np.allclose(mirrored.numpy(), stored[..., ::-1, ::-1].astype(np.float32), atol=1e-5)


def test_noise_differs_between_samples_and_is_the_same_run_after_run(cohort: dict[str, Path]) -> None:
    stored = np.load(next(cohort["3d"].glob("*.npy"))).astype(np.float32)
    noisy = augmentation(noise_std=0.3)
    first = noisy(stored, np.random.default_rng(1), 7).numpy() - stored
    second = noisy(stored, np.random.default_rng(2), 7).numpy() - stored
    assert first.std() == pytest.approx(0.3, rel=0.05) and second.std() == pytest.approx(0.3, rel=0.05)
    assert abs(np.corrcoef(first.ravel(), second.ravel())[0, 1]) < 0.05  # not the same pattern
    assert np.array_equal(first, noisy(stored, np.random.default_rng(1), 7).numpy() - stored)


def test_rotation_and_scale_move_the_anatomy_alike_in_every_slice_and_keep_the_background() -> None:
    size = 64
    sample = np.full((3, 4, size, size), -1.0, dtype=np.float32)  # background -1 (z-scored air)
    sample[:, :, 16, 44] = 5.0  # one bright voxel off-centre, in every sequence and slice
    augment = augmentation(rotate_degrees=30.0)
    out = augment(sample, np.random.default_rng(1)).numpy()
    draws = np.random.default_rng(1)
    draws.random(), draws.random()  # the two flip draws come first
    angle = draws.uniform(-30.0, 30.0)
    assert np.allclose(out[0, 0], out[2, 3])  # the same transform for every sequence and slice
    assert out.min() == pytest.approx(-1.0)  # outside the image is background, not 0
    weights = np.clip(out[0, 0] + 1.0, 0, None)
    rows, cols = np.indices(weights.shape)
    centre = (size - 1) / 2
    before = np.arctan2(16 - centre, 44 - centre)
    row = (weights * rows).sum() / weights.sum()
    col = (weights * cols).sum() / weights.sum()
    after = np.arctan2(row - centre, col - centre)
    assert abs(abs(np.degrees(after - before)) - abs(angle)) < 2.0
    assert np.hypot(row - centre, col - centre) == pytest.approx(np.hypot(16 - centre, 44 - centre), abs=1.0)
    again = augment(sample, np.random.default_rng(1)).numpy()
    assert np.array_equal(out, again)  # seeded
