"""Cohort-level ingest: de-identification, hashed keys, labels, rebuilding the output, and the stage CLI."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import RLELossless

from ingest_support import IDENTITY, STUDY_DATE, SeriesSpec, params, standard_specs, write_patient
from metastases.errors import UserError
from metastases.ingest import ingest_cohort

REPO = Path(__file__).resolve().parents[1]


def _all_output_bytes(*roots: Path) -> list[tuple[Path, bytes]]:
    """Every file below ``roots`` (and gzip files decompressed too)."""
    found = []
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            found.append((path, data))
            if path.suffix == ".gz":
                found.append((path, gzip.decompress(data)))
    return found


def test_no_identifying_value_reaches_any_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "raw"
    write_patient(raw, "mts-1")
    write_patient(raw, "norma-2", standard_specs(enhanced=True, tilt=5.0))
    write_patient(raw, "mts-3", standard_specs(transfer_syntax=RLELossless), mixed=True)
    # bad input too, so that problem messages are produced: a file named after its SOPInstanceUID, cut off
    source = next((raw / "mts-1" / "S004").iterdir())
    uid_name = str(pydicom.dcmread(source).SOPInstanceUID)
    (raw / "mts-1" / "S004" / uid_name).write_bytes(source.read_bytes()[:-50])
    write_patient(raw, "norma-4", [SeriesSpec("AX T2 FLAIR", 3)])  # missing sequences
    identifying = {value for value in IDENTITY.values()} | {STUDY_DATE}
    identifying |= {part for value in IDENTITY.values() for part in value.split("^")}
    for path in raw.rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
                identifying.add(str(ds.get(keyword, "")) or "none")
    identifying.discard("none")
    assert len(identifying) > 20

    caplog.set_level(logging.DEBUG)
    result = ingest_cohort(raw, tmp_path / "interim", params())
    (tmp_path / "metrics.json").write_text(json.dumps(result.metrics))

    assert result.metrics["problems_truncated"] == 1 and "<uid>" in json.dumps(result.report)
    captured = capfd.readouterr()
    texts = [
        ("log", caplog.text.encode()),
        ("stdout", captured.out.encode()),
        ("stderr", captured.err.encode()),
    ]
    outputs = _all_output_bytes(tmp_path / "interim", tmp_path / "metrics.json") + texts
    assert any(str(path).endswith(".nii.gz") for path, _ in outputs)
    for where, data in outputs:
        for value in identifying:
            assert value.encode() not in data, f"{value!r} found in {where}"


def test_hashed_keys_are_stable_and_hide_the_folder(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_patient(raw, "mts-1")
    write_patient(raw, "norma-2")
    first = ingest_cohort(raw, tmp_path / "a", params(patient_key="hash"), salt="pepper-4b9d1e07a3c2f865")
    again = ingest_cohort(raw, tmp_path / "b", params(patient_key="hash"), salt="pepper-4b9d1e07a3c2f865")
    other = ingest_cohort(raw, tmp_path / "c", params(patient_key="hash"), salt="paprika-91e2c0d4b7a36f58")

    keys = first.manifest["patient"].tolist()
    assert keys == again.manifest["patient"].tolist()
    assert set(keys).isdisjoint(other.manifest["patient"])
    assert len(set(keys)) == 2 and not any("mts" in k or "norma" in k for k in keys)
    assert sorted(first.manifest["label"]) == ["metastases", "normal"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir()) == sorted(keys)
    for where, data in _all_output_bytes(tmp_path / "a"):
        assert b"mts-1" not in data and b"norma-2" not in data, where


def test_labels_csv_wins_over_prefix_and_bad_values_are_reported(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for name in ("case-1", "case-2", "case-3", "NORMA-4", "mts-5"):
        write_patient(raw, name, standard_specs(n_slices=4, rows=8, columns=8))
    (raw / "labels.csv").write_text(
        "patient,label\ncase-1,Metastases\ncase-2,NORMAL\ncase-3,maybe\nmts-5,normal\n"
    )

    result = ingest_cohort(raw, tmp_path / "interim", params())

    labels = dict(zip(result.manifest["patient"], result.manifest["label"], strict=True))
    assert labels == {
        "NORMA-4": "normal",
        "case-1": "metastases",
        "case-2": "normal",
        "case-3": "",
        "mts-5": "normal",
    }
    problem = [p for p in result.report["problems"] if p["patient"] == "case-3"]
    assert [p["kind"] for p in problem] == ["no_label"] and "'maybe'" in problem[0]["reason"]
    assert result.manifest.set_index("patient").loc["case-3", "status"] == "excluded"


def test_output_is_rebuilt_from_scratch(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "interim"
    write_patient(raw, "mts-1")
    write_patient(raw, "norma-2")
    ingest_cohort(raw, out, params())
    first_bytes = (out / "mts-1" / "flair.nii.gz").read_bytes()
    (out / "stale.txt").write_text("left from an older run")
    (raw / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    for path in (raw / "norma-2").rglob("*"):
        if path.is_file():
            path.unlink()
    (raw / "norma-2" / "S003").rmdir()
    (raw / "norma-2" / "S004").rmdir()
    (raw / "norma-2" / "S007").rmdir()
    (raw / "norma-2").rmdir()

    result = ingest_cohort(raw, out, params())

    assert result.manifest["patient"].tolist() == ["mts-1"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "mts-1", "report.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind
    assert (out / "mts-1" / "flair.nii.gz").read_bytes() == first_bytes  # deterministic bytes (DVC-friendly)
    assert any("raw root" in s["reason"] for s in result.report["skipped"])


@pytest.mark.parametrize("make_empty", [False, True])
def test_missing_or_empty_raw_dir_says_how_to_build_the_demo(tmp_path: Path, make_empty: bool) -> None:
    raw = tmp_path / "raw"
    if make_empty:
        raw.mkdir()
        (raw / "labels.csv").write_text("patient,label\n")
    with pytest.raises(UserError, match=r"python -m metastases\.demo_cohort .*make run"):
        ingest_cohort(raw, tmp_path / "interim", params())
    assert not (tmp_path / "interim").exists()


def test_stage_script_missing_raw_dir_is_one_error_line(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "stages" / "ingest.py"),
            "--raw-dir",
            str(tmp_path / "nowhere"),
            "--out-dir",
            str(tmp_path / "interim"),
            "--metrics",
            str(tmp_path / "ingest.json"),
            "--params",
            str(REPO / "params.yaml"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "metastases.demo_cohort" in lines[0]
    assert "Traceback" not in completed.stderr + completed.stdout
