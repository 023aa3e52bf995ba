"""The benchmark on small arrays: rows in the asked order with their recipes, the fold-model ensemble on the
test split, the aggregate over training seeds, and the same numbers with --jobs."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from metastases import benchmark
from metastases.benchmark_folds import RESULT_FIELDS
from metastases.errors import ParamsError
from metastases.params import TrainingParams, train_sections
from metastases.training.folds import FoldResult, train_folds
from metastases.training.inputs import load_cohort

sys.path.insert(0, str(Path(__file__).parent))
from params_support import training_params
from synthetic_arrays import write_cohort

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["cnn3d", "lenet3d:study", "cnn2d:study"]
NAMES = ["cnn3d", "lenet3d (study recipe)", "cnn2d (study recipe)"]
TIMING = ("cpu_seconds", "wall_seconds", "data_wait_share")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cohort")
    files = write_cohort(root, patients=16, size_2d=64, size_3d=32, folds=3)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name in ("train_2d", "train_3d"):
        params[name].pop("val_fold", None)  # a key of earlier params files
        params[name].update(num_workers=0, device="cpu", restarts=0)
    params["cross_validate"] = {"threshold": params.get("cross_validate", {}).get("threshold", "youden")}
    params["evaluate"]["bootstrap"] = 200
    files["params"] = root / "params.yaml"
    files["params"].write_text(yaml.safe_dump(params))
    return files


def _run(cohort: dict[str, Path], out: Path, *, jobs: int, seeds: int, rows: list[str] = ROWS) -> dict:
    benchmark.main(
        [
            "--params", str(cohort["params"]),
            "--data-2d", str(cohort["2d"]), "--data-3d", str(cohort["3d"]),
            "--splits", str(cohort["splits"]),
            "--models", *rows,
            "--epochs", "1", "--threads", "1", "--jobs", str(jobs), "--seeds", str(seeds),
            "--out", str(out / "benchmark.md"), "--json", str(out / "benchmark.json"),
        ]
    )  # fmt: skip
    return json.loads((out / "benchmark.json").read_text())


@pytest.fixture(scope="module")
def two_seeds(cohort: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The same benchmark, two training seeds, serial and with two jobs."""
    out = tmp_path_factory.mktemp("bench")
    return {
        "serial": _run(cohort, out / "serial", jobs=1, seeds=2),
        "parallel": _run(cohort, out / "parallel", jobs=2, seeds=2),
        "table": {"text": (out / "parallel/benchmark.md").read_text()},  # type: ignore[dict-item]
    }


def test_rows_follow_the_models_with_their_recipes(two_seeds: dict[str, dict]) -> None:
    result = two_seeds["serial"]
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert result["seeds"] == [base["seed"], base["seed"] + 1]
    rows = result["rows"]
    assert rows[0]["model"].startswith("histogram") and rows[0]["recipe"] == "reference"
    assert [row["row"] for row in rows[1:]] == NAMES
    assert [(row["model"], row["dim"]) for row in rows[1:]] == [
        ("cnn3d", "3d"), ("lenet3d", "3d"), ("cnn2d", "2d")
    ]  # fmt: skip
    assert [row["input_shape"] for row in rows[1:]] == [[3, 20, 32, 32], [3, 20, 32, 32], [60, 64, 64]]
    same = rows[1]["settings"]
    train_3d = base["train_3d"]
    assert same["lr"] == train_3d["lr"] and same["lr_schedule"] == train_3d["lr_schedule"]
    assert same["batch_size"] == train_3d["batch_size"] and same["epochs"] == 1
    for row in rows[2:]:
        settings = row["settings"]
        assert row["recipe"] == "study"
        assert settings["lr"] == 1e-4 and settings["lr_schedule"] == "constant"
        assert settings["batch_size"] == 10 and settings["epochs"] == 1  # --epochs overrides 30 / 20
        assert settings["weight_decay"] == 0 and settings["noise_std"] == 0
        assert settings["intensity_shift"] == 0 and settings["restarts"] == 0
        assert settings["rotate_degrees"] == 0 and settings["scale"] == 0  # the study had neither
        assert settings["flip_horizontal"] == base[f"train_{row['dim']}"]["flip_horizontal"]
    # the per-seed runs: the reference once, then each row for each seed, in order
    runs = result["runs"]
    assert runs[0]["recipe"] == "reference"
    assert [(run["row"], run["seed"]) for run in runs[1:]] == [
        (name, seed) for name in NAMES for seed in result["seeds"]
    ]
    table = two_seeds["table"]["text"]
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith(
        "| model | recipe | input shape | CV AUC out-of-fold (mean ± std over seeds, min) | fold AUC mean"
    )
    assert (
        "| held-out AUC (mean ± std over seeds, min) | localisation | models not learned | CPU s |"
        in lines[0]
    )
    assert [line.split(" | ")[0][2:] for line in lines[1:]] == [rows[0]["row"], *NAMES]
    assert "| cnn2d (study recipe) | study: lr 0.0001 constant, batch 10, 1 ep | [60,64,64] |" in table


def test_the_aggregate_is_mean_std_min_and_sum_over_seeds(two_seeds: dict[str, dict]) -> None:
    result = two_seeds["serial"]
    for row in result["rows"][1:]:
        runs = [run for run in result["runs"] if run["row"] == row["row"]]
        assert len(runs) == 2 and row["seeds"] == [run["seed"] for run in runs]
        oof = np.array([run["cv_auc_oof"] for run in runs])
        held_out = np.array([run["test_auc"] for run in runs])
        folds = np.concatenate([run["fold_aucs"] for run in runs])
        assert row["cv_auc_oof_mean"] == pytest.approx(oof.mean())
        assert row["cv_auc_oof_std"] == pytest.approx(oof.std(ddof=1))
        assert row["cv_auc_oof_min"] == pytest.approx(oof.min())
        assert row["test_auc_mean"] == pytest.approx(held_out.mean())
        assert row["test_auc_std"] == pytest.approx(held_out.std(ddof=1))
        assert row["test_auc_min"] == pytest.approx(held_out.min())
        assert row["fold_auc_mean"] == pytest.approx(folds.mean())
        assert row["fold_auc_std"] == pytest.approx(folds.std(ddof=1))
        assert row["test_auc_ci95"] is None  # a CI is shown for one seed only
        assert row["not_learned"] == sum(run["not_learned"] for run in runs)
        assert row["fold_models"] == sum(run["fold_models"] for run in runs) == 6
        assert f"| {row['not_learned']}/6 |" in two_seeds["table"]["text"]


def test_held_out_scores_are_the_mean_of_the_learned_fold_models(two_seeds: dict[str, dict]) -> None:
    for run in two_seeds["serial"]["runs"][1:]:
        learned = [f["fold"] for f in run["folds"] if f["learned"]]
        members = learned or [f["fold"] for f in run["folds"]]
        assert run["not_learned"] == len(run["folds"]) - len(learned)
        assert run["ensemble_size"] == len(members) and run["ensemble_folds"] == members
        predictions = run["test_predictions"]
        fold_scores = np.array([predictions["fold_scores"][str(fold)] for fold in members])
        np.testing.assert_allclose(predictions["score"], fold_scores.mean(axis=0), rtol=0, atol=1e-12)
        assert run["test_auc"] == pytest.approx(roc_auc_score(predictions["label"], predictions["score"]))
        low, high = run["test_auc_ci95"]
        assert 0.0 <= low <= high <= 1.0
        oof = np.array([f["auc"] for f in run["folds"]])
        assert run["fold_auc_mean"] == pytest.approx(oof.mean())


def test_jobs_do_not_change_the_numbers(two_seeds: dict[str, dict]) -> None:
    serial, parallel = two_seeds["serial"], two_seeds["parallel"]

    def untimed(row: dict) -> dict:
        return {k: v for k, v in row.items() if k not in TIMING}

    for key in ("rows", "runs"):
        assert [untimed(row) for row in serial[key]] == [untimed(row) for row in parallel[key]]


def test_one_seed_shows_the_ci_and_the_seed_baselines(cohort: dict[str, Path], tmp_path: Path) -> None:
    result = _run(cohort, tmp_path, jobs=1, seeds=1, rows=["alexnet2d:study", "lenet3d"])
    _, seed_row, row = result["rows"]
    assert seed_row["row"] == "alexnet2d (study recipe)" and seed_row["recipe"] == "study"
    assert seed_row["settings"]["lr"] == 1e-4 and seed_row["settings"]["lr_schedule"] == "constant"
    assert seed_row["settings"]["batch_size"] == 10 and seed_row["input_shape"] == [60, 64, 64]
    assert row["row"] == "lenet3d" and row["recipe"] == "params" and row["cv_auc_oof_std"] is None
    run = result["runs"][2]
    assert row["test_auc_ci95"] == run["test_auc_ci95"] and row["test_auc_mean"] == run["test_auc"]
    low, high = row["test_auc_ci95"]
    table = (tmp_path / "benchmark.md").read_text()
    assert f"| {row['test_auc_mean']:.3f} [{low:.3f}, {high:.3f}] |" in table
    assert "| lenet3d | train_3d: lr" in table and "| held-out AUC [95% CI] |" in table
    assert "| alexnet2d (study recipe) | study: lr 0.0001 constant, batch 10, 1 ep | [60,64,64] |" in table


def test_a_row_with_fewer_seeds_runs_those_seeds_only(
    cohort: dict[str, Path], two_seeds: dict[str, dict], tmp_path: Path
) -> None:
    """``NAME@1`` in a two-seed benchmark: one run for that row, the same run (numbers and job key) as the
    first seed of the full row, marked in the table with its CI; the other row keeps both seeds."""
    result = _run(cohort, tmp_path, jobs=1, seeds=2, rows=["cnn2d:study@1", "cnn3d"])
    assert [(run["row"], run["seed"]) for run in result["runs"][1:]] == [
        ("cnn2d (study recipe)", 42), ("cnn3d", 42), ("cnn3d", 43)
    ]  # fmt: skip
    _, once, every = result["rows"]
    assert once["seeds"] == [42] and every["seeds"] == [42, 43]
    assert once["cv_auc_oof_std"] is None and once["test_auc_ci95"] is not None
    full = {(run["row"], run["seed"]): run for run in two_seeds["serial"]["runs"][1:]}
    for run in result["runs"][1:]:
        same = full[(run["row"], run["seed"])]
        assert run["job_key"] == same["job_key"]
        assert run["cv_auc_oof"] == same["cv_auc_oof"] and run["test_auc"] == same["test_auc"]
    table = (tmp_path / "benchmark.md").read_text()
    low, high = once["test_auc_ci95"]
    assert "| cnn2d (study recipe) (seed 42 only) | study: lr 0.0001 constant" in table
    assert f"| {once['test_auc_mean']:.3f} [{low:.3f}, {high:.3f}] |" in table
    assert "| cnn3d | train_3d" in table and "(mean ± std over seeds, min)" in table


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cnn2d", benchmark.RowSpec("cnn2d", "params")),
        ("cnn2d@2", benchmark.RowSpec("cnn2d", "params", 2)),
        ("lenet3d:study@1", benchmark.RowSpec("lenet3d", "study", 1)),
    ],
)
def test_row_syntax(text: str, expected: benchmark.RowSpec) -> None:
    assert benchmark.parse_row(text) == expected


def test_resume_reuses_finished_runs_and_reruns_changed_ones(cohort: dict[str, Path], tmp_path: Path) -> None:
    first = _run(cohort, tmp_path, jobs=1, seeds=1, rows=["cnn3d"])
    assert first["complete"] is True and all("job_key" in run for run in first["runs"][1:])

    def resume(*extra: str) -> dict:
        benchmark.main(
            [
                "--params", str(cohort["params"]),
                "--data-2d", str(cohort["2d"]), "--data-3d", str(cohort["3d"]),
                "--splits", str(cohort["splits"]), "--threads", "1",
                "--out", str(tmp_path / "benchmark.md"), "--json", str(tmp_path / "benchmark.json"),
                "--resume", *extra,
            ]
        )  # fmt: skip
        return json.loads((tmp_path / "benchmark.json").read_text())

    second = resume("--models", "cnn3d", "cnn2d:study", "--epochs", "1", "--seeds", "2")
    by_row_seed = {(run["row"], run.get("seed")): run for run in second["runs"][1:]}
    assert sorted(by_row_seed) == [
        ("cnn2d (study recipe)", 42),
        ("cnn2d (study recipe)", 43),
        ("cnn3d", 42),
        ("cnn3d", 43),
    ]
    # the finished run is taken as saved (its timings too: it was not trained again) ...
    assert by_row_seed[("cnn3d", 42)] == first["runs"][1]
    assert [row["row"] for row in second["rows"][1:]] == ["cnn3d", "cnn2d (study recipe)"]
    # all done: nothing is trained again, with any --jobs
    again = resume("--models", "cnn3d", "cnn2d:study", "--epochs", "1", "--seeds", "2", "--jobs", "2")
    assert again["runs"][1:] == second["runs"][1:] and again["complete"] is True
    # ... and a changed setting (2 epochs) is a different run: nothing is reused
    third = resume("--models", "cnn3d", "--epochs", "2")
    assert third["runs"][1]["settings"]["epochs"] == 2
    assert third["runs"][1]["job_key"] != first["runs"][1]["job_key"]


def test_runs_from_other_sittings_are_reused_by_job_key(cohort: dict[str, Path], tmp_path: Path) -> None:
    one = _run(cohort, tmp_path / "one", jobs=1, seeds=1, rows=["cnn3d"])
    other = _run(cohort, tmp_path / "other", jobs=1, seeds=1, rows=["lenet3d:study"])
    (tmp_path / "both").mkdir()
    benchmark.main(
        [
            "--params", str(cohort["params"]),
            "--data-2d", str(cohort["2d"]), "--data-3d", str(cohort["3d"]),
            "--splits", str(cohort["splits"]), "--threads", "1", "--epochs", "1",
            "--models", "cnn3d", "lenet3d:study",
            "--out", str(tmp_path / "both/benchmark.md"), "--json", str(tmp_path / "both/benchmark.json"),
            "--runs-from", str(tmp_path / "one/benchmark.json"), str(tmp_path / "other/benchmark.json"),
        ]
    )  # fmt: skip
    both = json.loads((tmp_path / "both/benchmark.json").read_text())
    # taken as saved, timings included: neither was trained again
    assert both["runs"][1:] == [one["runs"][1], other["runs"][1]] and both["complete"] is True
    assert [row["row"] for row in both["rows"][1:]] == ["cnn3d", "lenet3d (study recipe)"]


def test_runs_from_a_missing_or_foreign_file_is_one_error(cohort: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[]")
    for name, message in (("absent.json", "does not exist"), ("list.json", "is not a benchmark JSON")):
        with pytest.raises(ParamsError, match=f"--runs-from: .*{name} {message}"):
            benchmark.main(
                [
                    "--params", str(cohort["params"]),
                    "--data-2d", str(cohort["2d"]), "--data-3d", str(cohort["3d"]),
                    "--splits", str(cohort["splits"]), "--models", "cnn3d",
                    "--out", str(tmp_path / "b.md"), "--json", str(tmp_path / "b.json"),
                    "--runs-from", str(tmp_path / name),
                ]
            )  # fmt: skip
    assert not (tmp_path / "b.json").exists()


def test_resume_refuses_a_file_that_is_not_a_benchmark(cohort: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "benchmark.json").write_text("not json")
    with pytest.raises(ParamsError, match="--resume"):
        benchmark.main(
            [
                "--params", str(cohort["params"]), "--data-2d", str(cohort["2d"]),
                "--data-3d", str(cohort["3d"]), "--splits", str(cohort["splits"]),
                "--models", "cnn3d", "--epochs", "1", "--json", str(tmp_path / "benchmark.json"),
                "--out", str(tmp_path / "benchmark.md"), "--resume",
            ]
        )  # fmt: skip


def test_a_partial_table_is_written_after_every_run(cohort: dict[str, Path], tmp_path: Path) -> None:
    seen: list[str] = []
    original = benchmark.write_text

    def spy(path: Path, text: str) -> None:
        seen.append(text)
        original(path, text)

    benchmark.write_text = spy  # type: ignore[assignment]
    try:
        _run(cohort, tmp_path, jobs=1, seeds=1, rows=["cnn3d", "cnn2d"])
    finally:
        benchmark.write_text = original  # type: ignore[assignment]
    # after every fold model: what an unfinished run has so far, under the table
    assert "Partial: 0 of 2" in seen[0] and "cnn3d, seed 42: 1 of 3 fold models trained" in seen[0]
    first_row = next(text for text in seen if "| cnn3d |" in text)
    assert "Partial: 1 of 2" in first_row and "| cnn2d |" not in first_row
    assert "Partial" not in seen[-1] and "| cnn2d |" in seen[-1] and "fold models trained" not in seen[-1]


def test_default_rows_pair_each_baseline_recipe_with_the_default_model() -> None:
    specs = [benchmark.parse_row(text) for text in benchmark.DEFAULT_ROWS]
    assert [spec.name for spec in specs] == [
        "alexnet2d (study recipe)", "alexnet2d", "cnn2d", "lenet3d (study recipe)", "lenet3d", "cnn3d"
    ]  # fmt: skip
    base: dict[str, TrainingParams] = {"2d": training_params("2d"), "3d": training_params("3d")}
    seed_2d, seed_3d = (benchmark.row_params(specs[i], base) for i in (0, 3))
    assert (seed_2d.epochs, seed_3d.epochs) == (30, 20)
    assert (seed_2d.lr, seed_2d.lr_schedule, seed_2d.batch_size, seed_2d.weight_decay) == (
        1e-4,
        "constant",
        10,
        0,
    )
    assert (seed_3d.noise_std, seed_3d.intensity_shift) == (0, 0)
    # the study trained each model once, flipped left-right and neither rotated nor scaled
    assert base["3d"].restarts > 0 and base["3d"].rotate_degrees > 0 and base["3d"].scale > 0
    assert (seed_3d.restarts, seed_3d.rotate_degrees, seed_3d.scale) == (0, 0, 0)
    assert seed_3d.flip_horizontal == base["3d"].flip_horizontal
    own_recipe = benchmark.row_params(specs[4], base)
    assert own_recipe.restarts == base["3d"].restarts
    assert own_recipe.rotate_degrees == base["3d"].rotate_degrees
    assert benchmark.row_params(specs[2], base, epochs=3).epochs == 3


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--jobs", "0"], SystemExit),
        (["--seeds", "0"], SystemExit),
        (["--models", "cnn2d", "cnn2d:study", "cnn2d"], SystemExit),
        (["--models", "nonet:study"], ParamsError),
        (["--models", "cnn2d", "cnn2d@1"], SystemExit),  # the same row twice
        (["--models", "cnn2d@2"], SystemExit),  # more seeds than --seeds (1)
        (["--models", "cnn2d@0"], ParamsError),
        (["--models", "cnn2d@"], ParamsError),
        (["--models", "cnn2d:study@x"], ParamsError),
    ],
)
def test_benchmark_refuses_bad_options(cohort: dict[str, Path], args: list[str], error: type) -> None:
    with pytest.raises(error):
        benchmark.main(["--params", str(cohort["params"]), "--splits", str(cohort["splits"]), *args])


def test_help_documents_the_row_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "NAME:seed" in text and "--seeds" in text and "@N" in text


def _argv(cohort: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--params", str(cohort["params"]),
        "--data-2d", str(cohort["2d"]), "--data-3d", str(cohort["3d"]), "--splits", str(cohort["splits"]),
        "--threads", "1", "--out", str(out / "benchmark.md"), "--json", str(out / "benchmark.json"), *extra,
    ]  # fmt: skip


def _numbers(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in (*TIMING, "job_key")}


def test_a_run_is_what_cross_validation_trains(cohort: dict[str, Path], two_seeds: dict[str, dict]) -> None:
    """The benchmark trains each fold model as a task of its own: the same fold models, to the last digit,
    as the pipeline's train_folds (so runs saved by either are the same runs)."""
    run = next(r for r in two_seeds["serial"]["runs"] if r.get("row") == "cnn3d" and r["seed"] == 42)
    params = benchmark.row_params(
        benchmark.parse_row("cnn3d"), train_sections(cohort["params"]), epochs=1, threads=1
    )
    cv = train_folds(load_cohort(cohort["3d"], cohort["splits"], "3d"), params, 42, torch.device("cpu"))
    assert [f["auc"] for f in run["folds"]] == [f.auc for f in cv.folds]
    assert [f["train_loss"] for f in run["folds"]] == [f.train_loss for f in cv.folds]
    assert [f["init_seed"] for f in run["folds"]] == [f.seed for f in cv.folds]
    assert run["cv_auc_oof"] == roc_auc_score(cv.out_of_fold["label"], cv.out_of_fold["score"])


def test_fold_files_keep_every_field_of_a_fold_result() -> None:
    fields = {field.name for field in dataclasses.fields(FoldResult)}
    assert fields == {*RESULT_FIELDS, "epochs", "model"}


def test_an_interrupted_benchmark_resumes_from_its_saved_fold_models(
    cohort: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed (SIGKILL) after its first fold model: --resume trains only the others, and the run is the
    uninterrupted run's, number for number; the fold files go once the run is saved."""
    rows = ("--models", "cnn3d", "--epochs", "8", "--seeds", "1", "--jobs", "1")
    benchmark.main(_argv(cohort, tmp_path / "whole", *rows))
    whole = json.loads((tmp_path / "whole/benchmark.json").read_text())
    assert not (tmp_path / "whole/benchmark-folds").exists()

    out = tmp_path / "cut"
    command = [sys.executable, "-m", "metastases.benchmark", *_argv(cohort, out, *rows)]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "benchmark.json").exists() and process.poll() is None:  # after the first fold model
        assert time.monotonic() < deadline, "no fold model saved within 2 minutes"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    cut = json.loads((out / "benchmark.json").read_text())
    assert not cut["complete"] and len(cut["runs"]) == 1, "the run finished before it could be interrupted"
    # the finished fold model of the unfinished run is reported, in the JSON and under the table
    (unfinished,) = cut["unfinished"]
    assert (unfinished["row"], unfinished["seed"], unfinished["fold_models"]) == ("cnn3d", 42, 3)
    first = whole["runs"][1]["folds"][0]
    assert [fold["fold"] for fold in unfinished["folds"]] == [0]
    assert unfinished["folds"][0]["auc"] == first["auc"]
    assert unfinished["folds"][0]["train_loss"] == first["train_loss"]
    assert "cnn3d, seed 42: 1 of 3 fold models trained" in (out / "benchmark.md").read_text()
    (saved,) = (out / "benchmark-folds").glob("*-fold0.pt")
    # a damaged fold file is one warning and is trained again, not a traceback
    damaged = saved.with_name(saved.name.replace("-fold0", "-fold1"))
    damaged.write_bytes(b"not a model")
    with caplog.at_level(logging.INFO):
        benchmark.main(_argv(cohort, out, *rows, "--resume"))
    assert "1 fold models taken from" in caplog.text and "2 to train" in caplog.text
    assert "not a readable fold model" in caplog.text
    resumed = json.loads((out / "benchmark.json").read_text())
    assert _numbers(resumed["runs"][1]) == _numbers(whole["runs"][1])
    assert resumed["runs"][1]["job_key"] == whole["runs"][1]["job_key"]
    assert resumed["unfinished"] == [] and resumed["complete"]
    assert not (out / "benchmark-folds").exists()
