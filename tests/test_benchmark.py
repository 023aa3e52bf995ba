"""The benchmark on small arrays: one row per model in the asked order, the same numbers with --jobs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from metastases import benchmark

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_arrays import write_cohort

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cohort")
    files = write_cohort(root, patients=16, size_2d=32, size_3d=32, folds=3)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section in ("train_2d", "train_3d"):
        params[section].update(num_workers=0, device="cpu")
    params["evaluate"]["bootstrap"] = 200
    files["params"] = root / "params.yaml"
    files["params"].write_text(yaml.safe_dump(params))
    return files


def _run(cohort: dict[str, Path], out: Path, jobs: int) -> list[dict]:
    benchmark.main(
        [
            "--params", str(cohort["params"]),
            "--data-2d", str(cohort["2d"]), "--data-3d", str(cohort["3d"]),
            "--splits", str(cohort["splits"]),
            "--models", "cnn3d", "cnn2d",
            "--epochs", "1", "--threads", "1", "--jobs", str(jobs),
            "--out", str(out / "benchmark.md"), "--json", str(out / "benchmark.json"),
        ]
    )  # fmt: skip
    return json.loads((out / "benchmark.json").read_text())


def test_benchmark_rows_follow_the_models_and_jobs_do_not_change_the_numbers(
    cohort: dict[str, Path], tmp_path: Path
) -> None:
    serial = _run(cohort, tmp_path / "serial", jobs=1)
    parallel = _run(cohort, tmp_path / "parallel", jobs=2)
    assert [row["model"] for row in serial] == [row["model"] for row in parallel]
    assert serial[0]["model"].startswith("histogram")
    assert [(row["model"], row["dim"]) for row in serial[1:]] == [("cnn3d", "3d"), ("cnn2d", "2d")]
    timing = ("cpu_seconds", "wall_seconds", "data_wait_share")
    for one, other in zip(serial, parallel, strict=True):
        assert {k: v for k, v in one.items() if k not in timing} == {
            k: v for k, v in other.items() if k not in timing
        }
        assert 0.0 <= one["test_auc"] <= 1.0 and 0.0 <= one["cv_auc_mean"] <= 1.0
    table = (tmp_path / "parallel/benchmark.md").read_text()
    assert "| cnn3d | 3d | 1/1 |" in table and "| cnn2d | 2d | 1/1 |" in table


def test_benchmark_refuses_zero_jobs(cohort: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _run(cohort, tmp_path, jobs=0)
