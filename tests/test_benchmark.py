"""The benchmark and the learning curve (benchmark/dvc.yaml): subsets, the table, and the real pipeline.

The end-to-end test runs a tiny configuration of the real benchmark pipeline through the real ``dvc``
CLI (a DVC project of its own in a temporary Git repository, with copies of stages/ and src/): it is
interrupted with SIGTERM while a run trains, and ``dvc repro`` again trains only what had not finished.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from metastases.benchmark import STUDY_EPOCHS, aggregate, markdown_table, row_params, training_subset
from metastases.errors import UserError

sys.path.insert(0, str(Path(__file__).parent))
from params_support import committed_params, training_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _splits(train_normal: int, train_metastases: int, test: int = 6) -> pd.DataFrame:
    labels = [0] * train_normal + [1] * train_metastases
    frame = pd.DataFrame({"patient": [f"p{i:03d}" for i in range(len(labels))], "label": labels,
                          "split": "train", "fold": 0})  # fmt: skip
    held = pd.DataFrame({"patient": [f"t{i}" for i in range(test)], "label": [0, 1] * (test // 2),
                         "split": "test", "fold": -1})  # fmt: skip
    return pd.concat([frame, held], ignore_index=True)


def test_subsets_are_nested_stratified_and_keep_the_held_out_patients() -> None:
    splits = _splits(60, 30)  # a third metastases
    subsets = {n: training_subset(splits, n, folds=3, seed=5) for n in (15, 30, 60, 90)}
    previous: set[str] = set()
    for patients, subset in subsets.items():
        train = subset[subset["split"] == "train"]
        assert len(train) == patients and int(train["label"].sum()) == patients // 3
        assert previous <= set(train["patient"])  # nested
        previous = set(train["patient"])
        held_out = subset.loc[subset["split"] == "test", "patient"]
        assert sorted(held_out) == sorted(splits.loc[splits["split"] == "test", "patient"])
        for fold in range(3):  # every fold holds both classes
            assert set(train.loc[train["fold"] == fold, "label"]) == {0, 1}
    assert not subsets[15]["patient"].equals(training_subset(splits, 15, folds=3, seed=6)["patient"])


def test_a_subset_too_large_or_too_small_for_the_folds_is_refused() -> None:
    splits = _splits(20, 20)
    with pytest.raises(UserError, match="41 patients asked for, but the training split holds 40"):
        training_subset(splits, 41, folds=5, seed=0)
    with pytest.raises(UserError, match="8 patients give 4 normal for 5 folds"):
        training_subset(splits, 8, folds=5, seed=0)


def test_the_study_recipe_replaces_the_optimiser_settings_only() -> None:
    base = training_params("3d")
    study = row_params(base, "lenet3d", "study")
    assert (study.model, study.lr, study.lr_schedule, study.batch_size) == ("lenet3d", 1e-4, "constant", 10)
    assert study.epochs == STUDY_EPOCHS["3d"] == 20 and study.restarts == 0
    assert (study.flip_horizontal, study.threads, study.precision) == (base.flip_horizontal, base.threads,
                                                                        base.precision)  # fmt: skip
    assert row_params(base, "lenet3d", "params") == training_params("3d", model="lenet3d")


def _run(row: str, seed: int, patients: int, oof: float, test: float, not_learned: int = 0) -> dict:
    return {"row": row, "seed": seed, "patients": patients, "oof_auc": oof, "test_auc": test,
            "test_auc_ci_low": test - 0.2, "test_auc_ci_high": 1.0, "localisation_oof": None,
            "localisation_test": None, "not_learned": not_learned, "fold_models": 5,
            "cpu_seconds": 100.0}  # fmt: skip


def test_the_table_and_the_curve_aggregate_over_seeds() -> None:
    runs = [_run("cnn3d", s, n, oof, 0.8) for s, n, oof in ((42, 48, 0.8), (43, 48, 0.9), (42, 96, 0.9),
                                                             (43, 96, 0.96), (44, 96, 0.93))]  # fmt: skip
    runs.append(_run("lenet3d (study recipe)", 42, 96, 0.55, 0.5, not_learned=5))
    table, curve = aggregate(runs)
    assert list(table["row"]) == ["cnn3d", "lenet3d (study recipe)"] and set(table["patients"]) == {96}
    cnn = curve[(curve["row"] == "cnn3d") & (curve["patients"] == 96)].iloc[0]
    assert cnn["oof_auc_mean"] == pytest.approx(0.93) and cnn["oof_auc_std"] == pytest.approx(0.03)
    assert (cnn["oof_auc_min"], cnn["seeds"], cnn["cpu_seconds"]) == (0.9, 3, 300.0)
    text = markdown_table(table, curve, commit="abc1234", date="2026-12-05")
    assert "commit `abc1234`, 2026-12-05" in text
    assert "| cnn3d | 96 | 3 | 0.930 ± 0.030 (min 0.900) | 0.800 ± 0.000 (min 0.800) |" in text
    assert "| lenet3d (study recipe) | 96 | 1 | 0.550 | 0.500 [0.300, 1.000] | - / - | 5/5 | 100 |" in text
    assert "| cnn3d | 0.85 / 0.80 (± 0.07) | 0.93 / 0.80 (± 0.03) |" in text


# --- the real pipeline, tiny -------------------------------------------------------------------------

BENCHMARK_PARAMS = {
    "cohort": {"patients": 20, "size_scale": 0.25, "seed": 11},
    "curve": {"seeds": [42], "patients": [8, 16]},
    "baselines": {"models": ["lenet3d"], "recipes": ["study"], "seeds": [42]},
}


def _env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _run_cmd(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    assert not check or done.returncode == 0, (
        f"{' '.join(cmd)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def _tiny_repo(root: Path, benchmark: dict) -> Path:
    """A Git repository with copies of stages/ and src/, a tiny params.yaml, and benchmark/ a DVC project."""
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    tiny = committed_params(
        split={"folds": 2}, slice_2d={"image_size": 32}, stack_3d={"image_size": 32},
        train_2d={"epochs": 1, "restarts": 0, "batch_size": 4},
        train_3d={"epochs": 1, "restarts": 0, "batch_size": 4},
        evaluate={"bootstrap": 100},
    )  # fmt: skip
    (root / "params.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    (root / "benchmark").mkdir()
    shutil.copy(ROOT / "benchmark/dvc.yaml", root / "benchmark/dvc.yaml")
    (root / "benchmark/params.yaml").write_text(yaml.safe_dump(benchmark, sort_keys=False))
    _run_cmd(["git", "init", "-q"], root)
    _run_cmd(["dvc", "init", "-q", "--subdir"], root / "benchmark")
    return root / "benchmark"


def _ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


@pytest.mark.slow
def test_an_interrupted_benchmark_resumes_and_trains_only_what_had_not_finished(tmp_path: Path) -> None:
    repo = _tiny_repo(tmp_path, BENCHMARK_PARAMS)
    first = subprocess.Popen(["dvc", "repro"], cwd=repo, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    finished = repo / "runs/curve/2d-42-8.json"
    deadline = time.monotonic() + 600
    while not finished.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert finished.exists(), first.communicate()[0][-3000:]
    time.sleep(3)  # the next run is training
    os.killpg(first.pid, signal.SIGTERM)
    before = first.communicate(timeout=120)[0]
    done_before = set(_ran(before)) - {_ran(before)[-1]}  # the last one started was interrupted
    assert "curve@2d-42-8" in done_before and "table" not in done_before
    second = _run_cmd(["dvc", "repro"], repo).stdout
    rerun = set(_ran(second))
    assert not rerun & done_before, f"finished stages ran again: {rerun & done_before}"
    every = {
        "curve@2d-42-8",
        "curve@2d-42-16",
        "curve@3d-42-8",
        "curve@3d-42-16",
        "baselines@lenet3d-study-42",
    }
    assert every <= done_before | rerun and "table" in rerun
    assert "up to date" in _run_cmd(["dvc", "status"], repo).stdout
    metrics = json.loads((repo / "metrics/benchmark.json").read_text())
    assert set(metrics) == {"histogram", "lenet3d:study", "cnn2d", "cnn3d"}
    runs = {p.stem: json.loads(p.read_text()) for p in (repo / "runs/curve").glob("*.json")}
    assert metrics["cnn3d"]["oof_auc_mean"] == runs["3d-42-16"]["oof_auc"]  # 16: every training patient
    curve = pd.read_csv(repo / "plots/learning_curve/3d.csv")
    assert list(curve["patients"]) == [8, 16]
    assert np.allclose(curve["oof_auc_mean"], [runs["3d-42-8"]["oof_auc"], runs["3d-42-16"]["oof_auc"]])
    assert (repo / "plots/learning_curve.png").read_bytes().startswith(b"\x89PNG")
    assert "| cnn3d | 16 | 1 |" in (repo / "benchmark.md").read_text()


BAD_PARAMS = [
    (
        {"baselines": {"models": ["lenet9d"], "recipes": ["study"], "seeds": [42]}},
        r"baselines\.models: .*lenet9d",
    ),
    (
        {"curve": {"seeds": [42], "patients": [8, 40]}},
        r"curve\.patients: 40 patients asked for, but .* holds 16",
    ),
    (
        {"curve": {"seeds": [42], "patients": [2, 16]}},
        r"curve\.patients: 2 patients give 1 normal for 2 folds",
    ),
]


@pytest.mark.slow
def test_bad_benchmark_params_stop_before_anything_trains(tmp_path: Path) -> None:
    """An unknown model, a subset larger than the training split, one too small for the folds: one
    ``error:`` line naming the param, from the stage that checks them before any run (the data stages
    before it run once)."""
    repo = _tiny_repo(tmp_path, BENCHMARK_PARAMS)
    _run_cmd(["dvc", "repro", "split"], repo)
    for change, message in BAD_PARAMS:
        (repo / "params.yaml").write_text(yaml.safe_dump(BENCHMARK_PARAMS | change, sort_keys=False))
        done = _run_cmd(["dvc", "repro"], repo, check=False)
        output = done.stdout + done.stderr
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert done.returncode != 0 and len(errors) == 1 and re.match(rf"^error: {message}", errors[0]), (
            output
        )
        assert "Traceback" not in output and "Running stage 'subsets'" in output
        assert not (repo / "runs").exists()
