"""scripts/explore_2d.py is a faithful harness: with no options it trains exactly what cross-validation
trains (same fold models, same seeds), so a variant's numbers differ from the default's only by the
variant."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from metastases.params import training_section
from metastases.training.folds import train_folds
from metastases.training.inputs import load_cohort
from metastases.training.runtime import configure_torch

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_arrays import write_cohort

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "explore_2d.py"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("explore")
    files = write_cohort(root, patients=16, size_2d=32, folds=3)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train_2d"].update(epochs=2, restarts=0, parallel_folds=1, num_workers=0, threads=1, device="cpu")
    files["params"] = root / "params.yaml"
    files["params"].write_text(yaml.safe_dump(params))
    return files


def _explore(cohort: dict[str, Path], *options: str) -> dict:
    command = [sys.executable, str(SCRIPT), "--arrays", str(cohort["2d"]), "--splits", str(cohort["splits"]),
               "--params", str(cohort["params"]), "--jobs", "1", *options]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def default(cohort: dict[str, Path]) -> dict:
    """The script with no options (run once for the module)."""
    return _explore(cohort)


def test_no_options_reproduce_cross_validation(cohort: dict[str, Path], default: dict) -> None:
    params = training_section("2d", cohort["params"])
    configure_torch(True, 1, torch.device("cpu"))
    cv = train_folds(load_cohort(cohort["2d"], cohort["splits"], "2d"), params, 42, torch.device("cpu"))
    oof = cv.out_of_fold
    explored = default
    assert explored["fold_auc"] == [round(fold.auc, 3) for fold in cv.folds]
    assert explored["train_loss"] == [round(fold.epochs[-1].train_loss, 3) for fold in cv.folds]
    assert explored["oof_auc"] == round(float(roc_auc_score(oof["label"], oof["score"])), 3)


def test_a_variant_trains_another_model(cohort: dict[str, Path], default: dict) -> None:
    options = ["--channels", "4", "8", "--strides", "2", "2", "--position", "--set", "lr=0.01"]
    variant = _explore(cohort, *options)
    assert variant["settings"] == {"lr": 0.01} and variant["position"] is True
    assert len(variant["fold_auc"]) == 3 and np.isfinite(variant["oof_auc"])
    assert variant["train_loss"] != default["train_loss"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("nonsense=1", "error: --set nonsense=1: train_2d has no setting 'nonsense'"),
        ("epochs=many", "error: --set epochs=many: not a valid int"),
    ],
)
def test_a_bad_setting_is_one_line(cohort: dict[str, Path], setting: str, message: str) -> None:
    command = [sys.executable, str(SCRIPT), "--params", str(cohort["params"]), "--set", setting]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip() == message
