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
import pandas as pd
import pydicom
import pytest
import yaml

pytestmark = pytest.mark.slow  # end-to-end or many processes: make test, not make test-fast

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
    (repo / "data/external").mkdir()  # no second site (as make run leaves it beside a user's own data)
    run(["dvc", "add", "-q", "data/raw", "data/external"], repo)
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
        if path.is_file() and path.name not in ("labels.csv", "lesions.csv", "DEMO_COHORT.txt"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            for tag in IDENTITY_TAGS:
                value = str(ds.get(tag, "") or "")
                if len(value) >= 6:
                    secrets.add(value)
    assert len(secrets) > 20, "the demo cohort must carry fake identifying tags"
    outputs = [repo / "data/interim", repo / "data/processed", repo / "data/splits.csv", repo / "metrics"]
    outputs += [
        repo / "plots",
        repo / "models",
        repo / "first_repro.log",
        repo / "dvc.lock",
        repo / "MODEL_CARD.md",
    ]
    files = [p for out in outputs if out.exists() for p in ([out] if out.is_file() else out.rglob("*"))]
    for path in (p for p in files if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} leaked into {path.relative_to(repo)}"


def mann_whitney_auc(labels: pd.Series, scores: pd.Series) -> float:
    """P(score of a positive > score of a negative), ties counting one half: a double loop over pairs."""
    y, s = labels.to_numpy(), scores.to_numpy(dtype=float)
    positives, negatives = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


COUNTED_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1")


def counted_at(labels: pd.Series, scores: pd.Series, threshold: float) -> dict[str, float]:
    """Accuracy, balanced accuracy, sensitivity, specificity, F1 by counting (``score >= threshold``)."""
    y, called = labels.to_numpy() == 1, scores.to_numpy(dtype=float) >= threshold
    tp, tn = int((y & called).sum()), int((~y & ~called).sum())
    fp, fn = int((~y & called).sum()), int((y & ~called).sum())
    sensitivity, specificity = tp / (tp + fn), tn / (tn + fp)
    return pytest.approx(  # type: ignore[return-value]
        {
            "accuracy": (tp + tn) / len(y),
            "balanced_accuracy": (sensitivity + specificity) / 2,
            "sensitivity": sensitivity,
            "specificity": specificity,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        }
    )


def check_metrics_against_predictions(
    metrics: dict, labels: pd.Series, scores: pd.Series, auc_key: str
) -> None:
    assert set(labels) == {0, 1}
    y, p = labels.to_numpy(dtype=float), scores.to_numpy(dtype=float)
    assert ((p >= 0) & (p <= 1)).all()
    brier = float(np.mean((p - y) ** 2))  # by hand: mean squared distance of probability and outcome
    assert metrics["brier"] == pytest.approx(brier, abs=1e-6)
    assert metrics[auc_key] == pytest.approx(mann_whitney_auc(labels, scores), abs=1e-9)


def test_evaluation_explains_calibrates_and_writes_the_model_card_from_its_own_numbers(repo):
    evaluate = json.loads((repo / "metrics/details/evaluate.json").read_text())
    cv = json.loads((repo / "metrics/details/cv.json").read_text())
    test = pd.read_csv(repo / "data/splits.csv", dtype={"patient": str}).query("split == 'test'")
    held_out = pd.read_csv(repo / "metrics/predictions.csv", dtype={"patient": str})
    out_of_fold = pd.read_csv(repo / "metrics/cv_predictions.csv", dtype={"patient": str})
    for dim in ("2d", "3d"):
        # every reported number is recomputed here by hand from the written predictions, which must be
        # the test patients with their split labels
        rows = held_out[held_out["model"] == dim].merge(test, on="patient", suffixes=("", "_split"))
        assert len(rows) == len(test) == evaluate[dim]["test_patients"]
        assert (rows["label"] == rows["label_split"]).all()
        check_metrics_against_predictions(evaluate[dim], rows["label"], rows["score"], "auc")
        at_half = {key: evaluate[dim][key] for key in COUNTED_METRICS}
        assert at_half == counted_at(rows["label"], rows["score"], 0.5)
        threshold = cv[dim]["threshold"]
        assert evaluate[dim]["threshold"] == threshold
        assert evaluate[dim]["at_cv_threshold"] == counted_at(rows["label"], rows["score"], threshold)
        oof = out_of_fold[out_of_fold["model"] == dim]
        assert len(oof) > 0 and set(oof["patient"]).isdisjoint(test["patient"])
        check_metrics_against_predictions(cv[dim], oof["label"], oof["score"], "oof_auc")
        # the demo cohort has lesions.csv: both default models are scored on where they looked
        assert evaluate[dim]["localisation_patients"] == int(test["label"].sum())
        assert cv[dim]["localisation_patients"] > 0
    pictures = sorted(p.stem for p in (repo / "plots/evidence").glob("*.png"))
    assert pictures == sorted(test["patient"])
    for name in ("evidence.png", "calibration.png"):
        assert (repo / "plots" / name).stat().st_size > 10_000
    card = (repo / "MODEL_CARD.md").read_text()
    assert "Not for diagnosis" in card
    assert f"{evaluate['3d']['auc']:.3f} [{evaluate['3d']['auc_ci_low']:.3f}" in card
    assert f"{cv['2d']['oof_auc']:.3f}" in card


def predict(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "metastases.predict", *args]
    return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, check=False)


def test_predict_gives_the_pipeline_score_for_a_renamed_shuffled_copy_of_a_test_patient(repo, tmp_path):
    """A held-out patient copied outside the repo under an MRN-like name, files renamed and flattened in
    another order: the same probabilities as the evaluate stage; no header value and not the folder name
    in anything printed or written."""
    scores = pd.read_csv(repo / "metrics/predictions.csv", dtype={"patient": str})
    patient = scores.iloc[0]["patient"]
    study = tmp_path / "123456789"
    study.mkdir()
    files = sorted(p for p in (repo / "data/raw" / patient).rglob("*") if p.is_file())
    for number, path in enumerate(reversed(files)):
        shutil.copy(path, study / f"x{(number * 7919) % 100003:06d}")
    out = tmp_path / "out"
    result = predict(repo, str(study), "--out", str(out))
    assert result.returncode == 0, result.stderr
    written = json.loads((out / "prediction.json").read_text())
    for dim in ("2d", "3d"):
        expected = scores[(scores["patient"] == patient) & (scores["model"] == dim)]["score"].item()
        assert written["models"][dim]["probability"] == pytest.approx(expected, abs=1e-5)
        assert f"{dim.upper()} " in result.stdout
    assert (out / "evidence.png").stat().st_size > 10_000
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    secrets = [str(header.get(tag, "")) for tag in IDENTITY_TAGS] + ["123456789", patient]
    everything = result.stdout + result.stderr + (out / "prediction.json").read_text()
    for secret in (s for s in secrets if len(s) >= 5):
        assert secret not in everything
        assert secret.encode() not in (out / "evidence.png").read_bytes()


def test_predict_scores_a_patient_generated_with_another_seed(repo, tmp_path):
    """Another generator seed and another geometry than the training cohort (matrices twice as large):
    preprocessing resamples, so the study is scored."""
    cv = json.loads((repo / "metrics/details/cv.json").read_text())
    run([sys.executable, "-m", "metastases.demo_cohort", str(tmp_path / "other"), "--patients", "2", "--seed",
         "101", "--size-scale", "0.5", "--workers", "1"], repo)  # fmt: skip
    for patient in ("mts-1", "norma-1"):
        result = predict(repo, str(tmp_path / "other" / patient), "--out", str(tmp_path / patient))
        assert result.returncode == 0, result.stderr
        written = json.loads((tmp_path / patient / "prediction.json").read_text())
        assert set(written["models"]) == {"2d", "3d"}
        for dim, entry in written["models"].items():
            assert 0 <= entry["probability"] <= 1
            # the threshold the cross-validate stage chose out of fold, and the decision taken at it
            assert entry["threshold"] == pytest.approx(cv[dim]["threshold"])
            called = "metastases" if entry["probability"] >= entry["threshold"] else "normal"
            assert entry["decision"] == called
            assert len(entry["strongest_evidence"]["lps_mm"]) == 3


def _corrupt_model(repo: Path, tmp_path: Path) -> Path:
    import torch

    payload = torch.load(repo / "models/3d.pt", weights_only=True)
    payload["preprocessing"]["image_size"] = 48  # a geometry the weights were not trained on
    path = tmp_path / "other-geometry.pt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "holds no files"),
        ("not_dicom", "no DICOM file could be read"),
        ("missing_t1c", "missing sequence(s): t1c"),
        ("unreadable_t1c", "missing sequence(s): t1c"),
        ("other_geometry", "preprocessing gives"),
        ("not_a_model", "not a readable model checkpoint"),
    ],
)
def test_predict_bad_input_is_one_line_and_writes_nothing(repo, tmp_path, case, message):
    study = tmp_path / "study"
    study.mkdir()
    patient = pd.read_csv(repo / "metrics/predictions.csv", dtype={"patient": str}).iloc[0]["patient"]
    files = sorted(p for p in (repo / "data/raw" / patient).rglob("*") if p.is_file())
    t1c = [p for p in files if re.search(r"(\+c|post|gd|km|_ce|ce$)", str(pydicom.dcmread(
        p, stop_before_pixels=True).get("SeriesDescription", "")).lower())]  # fmt: skip
    assert t1c
    model = ["--model", str(repo / "models/3d.pt")]
    if case == "not_dicom":
        (study / "notes.txt").write_text("not an image\n")
    elif case in ("missing_t1c", "unreadable_t1c", "other_geometry", "not_a_model"):
        for path in files:
            if case == "missing_t1c" and path in t1c:
                continue
            shutil.copy(path, study / f"f{len(list(study.iterdir())):05d}")
            if case == "unreadable_t1c" and path in t1c:
                ds = pydicom.dcmread(path)
                ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no pixel handler
                ds.save_as(study / f"f{len(list(study.iterdir())) - 1:05d}", enforce_file_format=True)
        if case == "other_geometry":
            model = ["--model", str(_corrupt_model(repo, tmp_path))]
        if case == "not_a_model":
            (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
            model = ["--model", str(tmp_path / "junk.pt")]
    out = tmp_path / "out"
    result = predict(repo, str(study), *model, "--out", str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "prediction.json").exists() and not (out / "evidence.png").exists()


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


def test_the_everyday_metrics_views_fit_a_terminal(repo):
    """``dvc metrics show`` lists the headline keys of every stage within 200 columns; ``make metrics``
    puts both models' numbers in one table within 120, the same numbers as the full metrics files."""
    shown = run(["dvc", "metrics", "show"], repo)
    assert max(len(line) for line in shown.splitlines()) <= 200, shown
    for key in ("2d.auc", "3d.oof_auc", "3d.localisation", "folds_learned", "patients_ok", "test_patients"):
        assert key in shown.splitlines()[0]
    table = run([sys.executable, "-m", "metastases.compare.summary"], repo)
    assert max(len(line) for line in table.splitlines()) <= 120, table
    evaluate = json.loads((repo / "metrics/details/evaluate.json").read_text())
    cv = json.loads((repo / "metrics/details/cv.json").read_text())
    for dim in ("2d", "3d"):
        row = next(line for line in table.splitlines() if line.startswith(dim.upper()))
        assert f"{cv[dim]['oof_auc']:.3f}" in row and f"{evaluate[dim]['auc']:.3f} [" in row


# What the training site's stages write: a second site must leave every byte of it as it was.
INTERNAL_OUTPUTS = (
    "metrics/ingest.json", "metrics/cv.json", "metrics/details/cv.json", "metrics/evaluate.json",
    "metrics/details/evaluate.json", "metrics/predictions.csv", "metrics/cv_predictions.csv", "MODEL_CARD.md",
    "models/2d.pt", "models/3d.pt", "plots/roc/model_3d.csv", "plots/evidence.png", "plots/calibration.png",
)  # fmt: skip


def _snapshot(repo: Path) -> dict[str, bytes]:
    return {name: (repo / name).read_bytes() for name in INTERNAL_OUTPUTS}


def test_without_an_external_cohort_the_external_stages_say_so_and_add_nothing(repo):
    assert json.loads((repo / "metrics/external.json").read_text()) == {}
    assert json.loads((repo / "metrics/details/external.json").read_text()) == {"patients": 0}
    assert "no external cohort" in (repo / "first_repro.log").read_text()
    assert "Another site" not in (repo / "MODEL_CARD.md").read_text()
    assert pd.read_csv(repo / "metrics/external_predictions.csv").empty


def test_a_second_site_scores_through_the_real_stages_and_leaves_the_training_site_unchanged(repo, tmp_path):
    before = _snapshot(repo)
    run([sys.executable, "-m", "metastases.demo_cohort", "data/external", "--site", "b", "--patients", "6",
         "--seed", "5", "--size-scale", "0.25", "--workers", "2"], repo)  # fmt: skip
    run(["dvc", "add", "-q", "data/external"], repo)
    assert stages_run(run(["dvc", "repro"], repo)) == {"ingest-external", "external", "evaluate"}
    external = json.loads((repo / "metrics/details/external.json").read_text())
    assert external["patients"] == 6 and external["calibration_patients"] == 2
    predictions = pd.read_csv(repo / "metrics/external_predictions.csv")
    for dim in ("2d", "3d"):
        scored = predictions[predictions["model"] == dim]
        assert external[dim]["auc"] == pytest.approx(mann_whitney_auc(scored["label"], scored["score"]))
        evaluation = scored[scored["part"] == "evaluation"]
        counted = counted_at(evaluation["label"], evaluation["score"], external[dim]["threshold"])
        assert external[dim]["at_cv_threshold"] == counted
        adapted = counted_at(evaluation["label"], evaluation["score"], external[dim]["adapted_threshold"])
        assert external[dim]["adapted"] == adapted
    assert not set(predictions["patient"]) & set(pd.read_csv(repo / "data/splits.csv")["patient"])
    card = (repo / "MODEL_CARD.md").read_text()
    assert "Another site" in card and f"{external['3d']['auc']:.3f} [" in card
    after = _snapshot(repo)
    assert [name for name in INTERNAL_OUTPUTS if after[name] != before[name]] == ["MODEL_CARD.md"]
    # a checkpoint whose recorded preprocessing the external volumes cannot meet: one line, nothing written
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "stages/external.py", "--model-3d", str(_corrupt_model(repo, tmp_path)),
         "--metrics", str(out / "external.json"), "--predictions", str(out / "p.csv"),
         "--plots-dir", str(out)],
        cwd=repo, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].startswith("error: ")
        and "preprocessing gives" in result.stderr
    )
    assert not out.exists()
    # the second site taken away again: every output is what it was before, byte for byte
    shutil.rmtree(repo / "data/external")
    (repo / "data/external").mkdir()
    run(["dvc", "add", "-q", "data/external"], repo)
    run(["dvc", "repro"], repo)
    assert _snapshot(repo) == before
    assert json.loads((repo / "metrics/details/external.json").read_text()) == {"patients": 0}
