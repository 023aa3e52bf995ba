"""Pseudonyms that stay secret: folder names that could identify a person never reach an output by
default, the salt is a secret kept out of params.yaml, placeholders are refused, keys are stable."""

from __future__ import annotations

import gzip
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ingest_support import params, standard_specs, write_patient
from metastases.demo_cohort import build_cohort
from metastases.errors import UserError
from metastases.ingest import ingest_cohort
from metastases.ingest.keys import DEMO_MARKER, SALT_ENV, is_demo_cohort, load_salt, looks_identifying

REPO = Path(__file__).resolve().parents[1]
# Folder names as hospital exports write them: a medical record number, a DICOM person name, "Last, First".
MRN_FOLDERS = {
    "4417723901": "metastases",
    "5528834012": "metastases",
    "6639945123": "metastases",
    "Qwertyson^Anneliese": "normal",
    "Zxcvbnik, Bartholomew": "normal",
    "7740056234": "normal",
}


def _identifying_fragments() -> set[str]:
    fragments = set(MRN_FOLDERS)
    fragments |= {"Qwertyson", "Anneliese", "Zxcvbnik", "Bartholomew", "4417723", "5528834", "7740056"}
    return fragments


def _every_byte(root: Path) -> list[tuple[Path, bytes]]:
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found.append((path, data))
        if path.suffix == ".gz":
            found.append((path, gzip.decompress(data)))
    return found


def _mrn_cohort(raw: Path) -> None:
    small = standard_specs(n_slices=4, rows=8, columns=8)
    for name in MRN_FOLDERS:
        write_patient(raw, name, small)
    rows = "".join(f"{name!r},{label}\n".replace("'", '"') for name, label in MRN_FOLDERS.items())
    (raw / "labels.csv").write_text("patient,label\n" + rows)


def _stage(script: str, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / script), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
    )


@pytest.mark.slow  # three stage scripts in subprocesses: about 6 s alone, more on a busy machine
def test_folders_named_like_mrns_leave_no_trace_with_default_params(tmp_path: Path) -> None:
    """The real stage scripts (ingest, split, slice-2d with its picture) with the committed params.yaml,
    as `dvc repro` runs them, from a working copy without a salt: the salt file is created there, and
    no output, log line or metric holds a folder name or a piece of one."""
    raw = tmp_path / "data" / "raw"
    _mrn_cohort(raw)
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    committed["split"] = {"folds": 2, "test_fraction": 0.2}
    committed["slice_2d"]["image_size"] = 32
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(committed))
    env = {k: v for k, v in os.environ.items() if k != SALT_ENV}
    ingest = _stage(
        "ingest.py",
        ["--raw-dir", "data/raw", "--out-dir", "data/interim", "--metrics", "metrics/ingest.json"],
        tmp_path,
        env,
    )
    assert ingest.returncode == 0, ingest.stderr
    split = _stage(
        "split.py",
        ["--interim-dir", "data/interim", "--out", "data/splits.csv", "--metrics", "metrics/split.json"],
        tmp_path,
        env,
    )
    assert split.returncode == 0, split.stderr
    arrays = _stage(
        "slice_2d.py",
        ["--out-dir", "data/processed/2d", "--samples-png", "plots/samples.png", "--workers", "1"],
        tmp_path,
        env,
    )
    assert arrays.returncode == 0, arrays.stderr

    salt_file = tmp_path / ".metastases-salt"
    assert salt_file.is_file() and stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    assert "created a new secret salt" in ingest.stderr
    splits = (tmp_path / "data" / "splits.csv").read_text()
    assert splits.count("p-") == len(MRN_FOLDERS)
    assert (tmp_path / "plots" / "samples.png").is_file()
    outputs = [(path, data) for path, data in _every_byte(tmp_path / "data") if raw not in path.parents]
    outputs += _every_byte(tmp_path / "metrics") + _every_byte(tmp_path / "plots")
    assert {p.name for p, _ in outputs} >= {"manifest.csv", "report.json", "splits.csv", "samples.png"}
    outputs += [(Path("stdout+stderr"), (p.stdout + p.stderr).encode()) for p in (ingest, split, arrays)]
    assert any(str(path).endswith(".nii.gz") for path, _ in outputs)
    for where, data in outputs:
        for fragment in _identifying_fragments():
            assert fragment.encode() not in data, f"{fragment!r} found in {where}"


def test_keys_are_stable_across_runs_and_colleagues_sharing_the_salt(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_patient(raw, "4417723901", standard_specs(n_slices=4, rows=8, columns=8))
    (raw / "labels.csv").write_text("patient,label\n4417723901,metastases\n")
    salt_file = tmp_path / "secret" / "salt"
    env_salt = os.environ.pop(SALT_ENV)
    try:
        first = ingest_cohort(raw, tmp_path / "a", params(patient_key="auto", salt_file=str(salt_file)))
        again = ingest_cohort(raw, tmp_path / "b", params(patient_key="auto", salt_file=str(salt_file)))
        # a colleague given the same salt through the environment
        os.environ[SALT_ENV] = salt_file.read_text().strip()
        colleague = ingest_cohort(raw, tmp_path / "c", params(patient_key="hash", salt_file="elsewhere"))
    finally:
        os.environ[SALT_ENV] = env_salt
    other = ingest_cohort(raw, tmp_path / "d", params(patient_key="hash"))  # the test salt

    key = first.manifest["patient"].iloc[0]
    assert key.startswith("p-") and len(key) == 18
    assert again.manifest["patient"].iloc[0] == key == colleague.manifest["patient"].iloc[0]
    assert other.manifest["patient"].iloc[0] != key
    fingerprints = {r.report["summary"]["salt_fingerprint"] for r in (first, again, colleague)}
    assert len(fingerprints) == 1 and other.report["summary"]["salt_fingerprint"] not in fingerprints
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    "salt", ["change-me", "", "   ", "short-salt", "CHANGE-ME-PLEASE-0123456789", "aaaaaaaaaaaaaaaaaaaa"]
)
def test_a_placeholder_salt_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, salt: str) -> None:
    raw = tmp_path / "raw"
    write_patient(raw, "4417723901", standard_specs(n_slices=4, rows=8, columns=8))
    monkeypatch.setenv(SALT_ENV, salt)
    with pytest.raises(UserError, match=rf"the salt in the environment variable {SALT_ENV} is"):
        ingest_cohort(raw, tmp_path / "interim", params(patient_key="auto"))
    monkeypatch.delenv(SALT_ENV)
    salt_file = tmp_path / "salt"
    salt_file.write_text(salt + "\n")
    with pytest.raises(UserError, match=r"the salt in .*salt is (empty|a placeholder|too short)"):
        load_salt(salt_file)
    assert not (tmp_path / "interim").exists()


def test_the_stage_refuses_a_placeholder_salt_in_one_line(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_patient(raw, "4417723901", standard_specs(n_slices=4, rows=8, columns=8))
    env = {**os.environ, SALT_ENV: "change-me"}
    completed = _stage(
        "ingest.py",
        [
            "--raw-dir",
            str(raw),
            "--out-dir",
            "interim",
            "--metrics",
            "m.json",
            "--params",
            str(REPO / "params.yaml"),
        ],
        tmp_path,
        env,
    )
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the salt in the environment variable METASTASES_SALT is a placeholder")


def test_the_salt_is_not_a_param_and_is_git_ignored() -> None:
    params_yaml = yaml.safe_load((REPO / "params.yaml").read_text())
    assert "salt" not in params_yaml["ingest"] and params_yaml["ingest"]["patient_key"] == "auto"
    assert "ingest.salt" not in (REPO / "dvc.yaml").read_text().replace("ingest.salt_file", "")
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", params_yaml["ingest"]["salt_file"]], cwd=REPO, check=False
    )
    assert ignored.returncode == 0


def test_the_demo_cohort_keeps_its_fake_folder_names_without_a_salt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = build_cohort(tmp_path / "raw", patients=2, seed=5, workers=1, size_scale=0.1)
    assert (raw / DEMO_MARKER).is_file()
    monkeypatch.delenv(SALT_ENV)
    monkeypatch.chdir(tmp_path)

    result = ingest_cohort(raw, tmp_path / "interim", params(patient_key="auto"))

    assert sorted(result.manifest["patient"]) == sorted(p.name for p in raw.iterdir() if p.is_dir())
    assert not (tmp_path / ".metastases-salt").exists()  # no secret needed to reproduce the demo outputs
    # a real patient added beside the demo cohort: names are no longer known to be fake, so all are hashed
    write_patient(raw, "4417723901", standard_specs(n_slices=4, rows=8, columns=8))
    assert not is_demo_cohort(raw, [p.name for p in raw.iterdir() if p.is_dir()])


def test_folder_keys_warn_when_names_look_like_identifiers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = tmp_path / "raw"
    write_patient(raw, "mts-1", standard_specs(n_slices=4, rows=8, columns=8))
    write_patient(raw, "mts-4417723901", standard_specs(n_slices=4, rows=8, columns=8))
    caplog.set_level(logging.WARNING)
    ingest_cohort(raw, tmp_path / "interim", params(patient_key="folder"))
    assert "1 folder name(s) look like identifiers" in caplog.text
    assert "4417723901" not in caplog.text
    assert [looks_identifying(n) for n in ("mts-12", "Doe^John", "Doe, John", "12345", "case-0042")] == [
        False,
        True,
        True,
        True,
        False,
    ]
