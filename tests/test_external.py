"""External validation's pieces: the calibration share, the metrics before and after adaptation against
hand counts, one-class sites, and the refusal of a patient present in both cohorts (real DICOM)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metastases.demo_cohort.build import build_cohort
from metastases.errors import UserError
from metastases.evaluation.external import Cohorts, calibration_parts, check_disjoint, site_metrics
from metastases.ingest import ingest_cohort
from metastases.ingest.studies import study_uids
from metastases.params import EvaluateParams, IngestParams, from_mapping
from params_support import committed_params

ROOT = Path(__file__).resolve().parents[1]


def _params() -> EvaluateParams:
    return from_mapping(EvaluateParams, "evaluate", committed_params(evaluate={"bootstrap": 200})["evaluate"])


def test_the_calibration_share_is_stratified_seeded_and_never_the_whole_site() -> None:
    patients = pd.DataFrame({"patient": [f"p{k}" for k in range(30)], "label": [0] * 15 + [1] * 15})
    parts = calibration_parts(patients, 0.34, seed=42)
    calibration = patients[parts == "calibration"]
    assert len(calibration) == 10  # round(0.34 * 30)
    assert calibration["label"].value_counts().to_dict() == {0: 5, 1: 5}
    assert parts.equals(calibration_parts(patients, 0.34, seed=42))
    assert not parts.equals(calibration_parts(patients, 0.34, seed=43))
    assert (calibration_parts(patients, 0.0, seed=42) == "evaluation").all()
    one_class = patients.assign(label=0)
    assert (calibration_parts(one_class, 0.34, seed=42) == "evaluation").all()


def test_metrics_before_and_after_adaptation_match_hand_counts() -> None:
    # every score sits above the training site's threshold 0.5: all called metastases before adaptation
    labels = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    scores = np.array([0.80, 0.82, 0.95, 0.97, 0.81, 0.84, 0.93, 0.96])
    parts = np.array(["calibration"] * 4 + ["evaluation"] * 4)
    result = site_metrics(labels, scores, parts, threshold=0.5, params=_params(), seed=0)
    assert result["auc"] == 1.0
    # evaluation patients 5-8 at 0.5: TP 2, FP 2 -> sensitivity 1, specificity 0
    assert result["at_cv_threshold"]["sensitivity"] == 1.0
    assert result["at_cv_threshold"]["specificity"] == 0.0
    # the calibration patients' Youden threshold is 0.95 (the lowest positive score above every negative)
    assert result["adapted_threshold"] == pytest.approx(0.95)
    # evaluation patients at 0.95: 0.93 is missed (FN), 0.96 found; both negatives below -> 0.5 / 1.0
    assert result["adapted"] == pytest.approx(
        {"accuracy": 0.75, "balanced_accuracy": 0.75, "sensitivity": 0.5, "specificity": 1.0, "f1": 2 / 3}
    )
    assert result["brier"] == pytest.approx(np.mean((scores - labels) ** 2))


def test_a_one_class_site_reports_what_is_defined_and_says_why_auc_is_not() -> None:
    labels = np.zeros(6, int)
    scores = np.array([0.1, 0.2, 0.7, 0.3, 0.9, 0.4])
    result = site_metrics(
        labels, scores, np.array(["evaluation"] * 6), threshold=0.5, params=_params(), seed=0
    )
    assert "auc" not in result
    assert result["auc_undefined"] == "one class only (normal)"
    assert result["at_cv_threshold"] == {
        "accuracy": pytest.approx(4 / 6),
        "specificity": pytest.approx(4 / 6),
    }
    assert "adapted" not in result


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory) -> Path:
    """Two tiny demo cohorts of different generator seeds, ingested (real DICOM, real ingest)."""
    root = tmp_path_factory.mktemp("sites")
    params = from_mapping(IngestParams, "ingest", committed_params(ingest={"workers": 1})["ingest"])
    for name, seed in (("raw", 3), ("external", 5)):
        build_cohort(root / name, 2, seed, 1, 0.1)
    # the second site's folders renamed, as another hospital's export would be
    for folder in sorted(p for p in (root / "external").iterdir() if p.is_dir()):
        folder.rename(folder.with_name(folder.name.replace("-", "-50")))
    labels = pd.read_csv(root / "external/labels.csv")
    labels.assign(patient=labels["patient"].str.replace("-", "-50")).to_csv(
        root / "external/labels.csv", index=False
    )
    (root / "external/lesions.csv").unlink()
    for name in ("raw", "external"):
        ingest_cohort(root / name, root / f"{name}_interim", params)
    return root


def _cohorts(root: Path) -> Cohorts:
    return Cohorts(root / "external_interim", root / "external", root / "raw_interim", root / "raw")


def test_two_distinct_sites_pass_and_a_copied_patient_is_refused(two_sites, tmp_path) -> None:
    external = pd.read_csv(two_sites / "external_interim/manifest.csv", dtype=str)
    check_disjoint(_cohorts(two_sites), external)  # distinct patients: no error
    assert study_uids(two_sites / "raw").isdisjoint(study_uids(two_sites / "external"))
    # one training patient copied into the external export under another folder name: same study UID
    copy = tmp_path / "copy"
    shutil.copytree(two_sites, copy)
    patient = sorted(p for p in (copy / "raw").iterdir() if p.is_dir())[0]
    shutil.copytree(patient, copy / "external" / "norma-999")
    with pytest.raises(UserError, match=r"share 1 DICOM study \(StudyInstanceUID\)") as error:
        check_disjoint(_cohorts(copy), external)
    assert patient.name not in str(error.value)  # folder names may identify: never printed
    # the same pseudonym key in both manifests
    same_key = external.assign(patient=pd.read_csv(two_sites / "raw_interim/manifest.csv")["patient"])
    with pytest.raises(UserError, match=r"share 2 patient key"):
        check_disjoint(_cohorts(two_sites), same_key)


def test_the_stage_refuses_a_shared_patient_in_one_line_and_writes_nothing(two_sites, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(two_sites, copy)
    patient = sorted(p for p in (copy / "raw").iterdir() if p.is_dir())[0]
    shutil.copytree(patient, copy / "external" / "norma-999")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages/external.py"), "--params", str(ROOT / "params.yaml"),
         "--interim-dir", str(copy / "external_interim"), "--raw-dir", str(copy / "external"),
         "--internal-interim-dir", str(copy / "raw_interim"), "--internal-raw-dir", str(copy / "raw"),
         "--model-2d", str(tmp_path / "no-2d.pt"), "--model-3d", str(tmp_path / "no-3d.pt"),
         "--metrics", str(out / "external.json"), "--predictions", str(out / "p.csv"),
         "--plots-dir", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "StudyInstanceUID" in errors[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()
