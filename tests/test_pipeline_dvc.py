"""The whole pipeline through the real `dvc` CLI and the real stage scripts, on a tiny demo cohort.

One module-scoped repository: built once, reproduced, then probed (up-to-date check, param change,
de-identification of every output).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IDENTITY_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "InstitutionName",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)

# One epoch, tiny arrays, two folds: every stage runs for real in seconds.
TINY_PARAMS = {
    "split": {"test_fraction": 0.34, "folds": 2},
    "slice_2d": {"image_size": 32},
    "stack_3d": {"image_size": 32},
    "train_2d": {"epochs": 1, "batch_size": 4, "num_workers": 0, "restarts": 0, "parallel_folds": 1},
    "train_3d": {"epochs": 1, "batch_size": 4, "num_workers": 0, "restarts": 0, "parallel_folds": 1},
    "evaluate": {"bootstrap": 200},
}
DEMO_COHORT = ["--patients", "12", "--seed", "3", "--size-scale", "0.25", "--workers", "2"]


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("pipeline")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for name, values in TINY_PARAMS.items():
        params[name].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    run([sys.executable, "-m", "metastases.demo_cohort", "data/raw", *DEMO_COHORT], repo)
    run(["dvc", "add", "-q", "data/raw"], repo)
    repo.joinpath("first_repro.log").write_text(run(["dvc", "repro"], repo))
    return repo


def test_every_stage_runs_and_leaves_its_outputs(repo):
    output = (repo / "first_repro.log").read_text()
    declared = set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    assert stages_run(output) == declared
    ingest = json.loads((repo / "metrics/ingest.json").read_text())
    assert ingest["patients_ok"] == 12
    assert (repo / "data/splits.csv").is_file()
    assert (repo / "plots/samples.png").stat().st_size > 10_000


def test_second_repro_does_nothing(repo):
    output = run(["dvc", "repro"], repo)
    assert stages_run(output) == set()
    assert "up to date" in output.lower()
    status = run(["dvc", "status"], repo)
    assert "up to date" in status.lower()


def test_changing_a_split_param_reruns_split_and_its_dependants_only(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["split"]["test_fraction"] = 0.25
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = stages_run(run(["dvc", "repro"], repo))
    assert "split" in ran
    assert ran.isdisjoint({"ingest", "slice-2d", "stack-3d"})


def test_no_identifying_header_value_reaches_any_output(repo):
    secrets: set[str] = set()
    for path in (repo / "data/raw").rglob("*"):
        if path.is_file() and path.name != "labels.csv":
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            for tag in IDENTITY_TAGS:
                value = str(ds.get(tag, "") or "")
                if len(value) >= 6:
                    secrets.add(value)
    assert len(secrets) > 20, "the demo cohort must carry fake identifying tags"
    outputs = [repo / "data/interim", repo / "data/processed", repo / "data/splits.csv", repo / "metrics"]
    outputs += [repo / "plots", repo / "models", repo / "first_repro.log", repo / "dvc.lock"]
    files = [p for out in outputs if out.exists() for p in ([out] if out.is_file() else out.rglob("*"))]
    for path in (p for p in files if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} leaked into {path.relative_to(repo)}"


def test_changing_only_the_in_plane_size_by_exp_run_rebuilds_the_arrays(repo):
    """DVC's run-cache ignores keys named ``size`` (treeverse/dvc#10296): with ``size`` a change of it
    alone restored the old arrays ("is cached - skipping run"). ``image_size`` is seen."""
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny pipeline"], repo)
    before = np.load(next((repo / "data/processed/3d").glob("*.npy")), mmap_mode="r").shape
    output = run(["dvc", "exp", "run", "-S", "stack_3d.image_size=40"], repo)
    assert "stack-3d" in stages_run(output), output
    assert "Stage 'stack-3d' is cached" not in output
    shapes = {np.load(p, mmap_mode="r").shape for p in (repo / "data/processed/3d").glob("*.npy")}
    assert before == (3, 20, 32, 32) and shapes == {(3, 20, 40, 40)}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["stack-3d"]["params"]["params.yaml"]["stack_3d"]["image_size"] == 40
