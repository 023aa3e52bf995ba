"""Real hospital exports: DERIVED reformats, several studies in one folder, files without a preamble, a
DICOMDIR, series that cannot be used (4-D, screen captures, MIPs, other body parts), empty folders, and
what ingest tells the user to do."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ingest_support import (
    SeriesSpec,
    expected_volume,
    params,
    standard_specs,
    write_patient,
    write_series,
)
from metastases.errors import UserError
from metastases.ingest import ingest_cohort

REPO = Path(__file__).resolve().parents[1]
DERIVED = ("DERIVED", "SECONDARY", "MPR")


def _skipped(result: object) -> dict[str, str]:
    report = result.report  # type: ignore[attr-defined]
    return {s["series"]: s["reason"] for s in report["skipped"] if s["series"]}


def test_a_patient_with_only_derived_axial_reformats_is_ingested_and_says_so(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_patient(raw, "mts-1", standard_specs(image_type=DERIVED))

    result = ingest_cohort(raw, tmp_path / "interim", params())

    row = result.manifest.iloc[0]
    assert row["status"] == "ok"
    assert [row[f"{s}_derived"] for s in ("flair", "t2", "t1c")] == ["yes", "yes", "yes"]
    assert row["reason"].count("DERIVED series used") == 3
    assert result.report["summary"]["derived_series_used"] == 3 and result.metrics["derived_series_used"] == 3
    volume = np.asarray(nib.load(tmp_path / "interim" / "mts-1" / "t1c.nii.gz").dataobj)
    np.testing.assert_array_equal(volume, expected_volume(6, 16, 12))


def test_derived_series_can_be_forbidden_and_original_ones_win(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_patient(raw, "mts-1", standard_specs(image_type=DERIVED))
    folder = write_patient(raw, "mts-2", standard_specs())
    # an axial reformat with more slices than the ORIGINAL T1+C: the ORIGINAL is still preferred
    write_series(folder / "S020", SeriesSpec("AX T1 +C MPR", 20, n_slices=9, image_type=DERIVED), 1, "mpr")

    forbidden = ingest_cohort(raw, tmp_path / "a", params(allow_derived=False))
    allowed = ingest_cohort(raw, tmp_path / "b", params())

    rows = forbidden.manifest.set_index("patient")
    assert rows.loc["mts-1", "status"] == "excluded" and rows.loc["mts-2", "status"] == "ok"
    assert "its series were skipped (derived image" in rows.loc["mts-1", "reason"]
    assert "no series matched" not in rows.loc["mts-1", "reason"]
    reasons = [s["reason"] for s in forbidden.report["skipped"] if s["patient"] == "mts-1"]
    assert len(reasons) == 3 and all("ingest.allow_derived is false" in r for r in reasons)
    row = allowed.manifest.set_index("patient").loc["mts-2"]
    assert (row["t1c_derived"], row["t1c_slices"]) == ("no", 6)
    assert "ORIGINAL before DERIVED" in _skipped(allowed)['series 20 "AX T1 +C MPR"']


def _two_studies(raw: Path, name: str, follow_up_t1c: bool = True) -> Path:
    """Baseline (1987-11-23) and follow-up (1988-05-23, 182 days later) in one folder; the follow-up's
    FLAIR has more slices, so mixing studies by slice count would pick it with the baseline's T1+C."""
    baseline = {
        s: SeriesSpec(f"BASE {d}", n, study_seed="baseline", study_date="19871123")
        for (s, d), n in zip(
            {"flair": "AX FLAIR", "t2": "AX T2", "t1c": "AX T1 +C"}.items(), (3, 4, 7), strict=True
        )
    }
    follow = {
        "flair": SeriesSpec("FU AX FLAIR", 103, n_slices=9, study_seed="follow-up", study_date="19880523"),
        "t2": SeriesSpec("FU AX T2", 104, study_seed="follow-up", study_date="19880523"),
    }
    if follow_up_t1c:
        follow["t1c"] = SeriesSpec("FU AX T1 +C", 107, study_seed="follow-up", study_date="19880523")
    return write_patient(raw, name, [*follow.values(), *baseline.values()])


@pytest.mark.parametrize(
    ("rule", "follow_up_t1c", "prefix", "chosen"),
    [
        ("latest", True, "FU ", "study 2 of 2 (day +182)"),
        ("earliest", True, "BASE ", "study 1 of 2 (day 0)"),
        ("latest", False, "BASE ", "study 1 of 2 (day 0)"),  # the follow-up lacks a T1+C
    ],
)
def test_one_study_per_patient_chosen_by_the_rule_and_named_without_dates(
    tmp_path: Path, rule: str, follow_up_t1c: bool, prefix: str, chosen: str
) -> None:
    raw = tmp_path / "raw"
    _two_studies(raw, "mts-1", follow_up_t1c)

    result = ingest_cohort(raw, tmp_path / "interim", params(study=rule))

    row = result.manifest.iloc[0]
    assert row["status"] == "ok" and row["study"] == chosen
    assert all(row[f"{s}_description"].startswith(prefix) for s in ("flair", "t2", "t1c"))
    studies = result.report["studies"]["mts-1"]
    assert [s["study"] for s in studies] == ["study 1 of 2 (day 0)", "study 2 of 2 (day +182)"]
    assert [s["study"] for s in studies if s["chosen"]] == [chosen]
    assert studies[1]["sequences"] == (["flair", "t2", "t1c"] if follow_up_t1c else ["flair", "t2"])
    assert result.report["summary"]["patients_with_several_studies"] == 1
    not_chosen = {s for s, r in _skipped(result).items() if f"not the chosen {chosen}" in r}
    other_prefix = "BASE " if prefix == "FU " else "FU "
    assert not_chosen == {s for s in _skipped(result) if s.split('"')[1].startswith(other_prefix)}
    assert len(not_chosen) == (3 if follow_up_t1c or prefix == "FU " else 2)
    text = (tmp_path / "interim" / "report.json").read_text() + (
        tmp_path / "interim" / "manifest.csv"
    ).read_text()
    for date in ("1987", "1988", "19871123", "19880523"):
        assert date not in text


def test_a_sequence_only_in_the_other_study_is_named_in_the_reason(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_patient(
        raw,
        "mts-1",
        [
            SeriesSpec("AX FLAIR", 3, study_seed="one", study_date="20200101"),
            SeriesSpec("AX T2", 4, study_seed="one", study_date="20200101"),
            SeriesSpec("AX T1 +C", 7, study_seed="two", study_date="20200301"),
        ],
    )
    write_patient(raw, "mts-2")

    result = ingest_cohort(raw, tmp_path / "interim", params())

    row = result.manifest.set_index("patient").loc["mts-1"]
    assert row["status"] == "excluded"
    assert "t1c only in study 2 of 2 (day +60)" in row["reason"]


def _strip_preamble(path: Path) -> None:
    """The file without its 128-byte preamble and ``DICM`` (file meta kept)."""
    path.write_bytes(path.read_bytes()[132:])


def _bare_dataset(path: Path) -> None:
    """The dataset alone, implicit VR little endian, no preamble and no file meta (old ACR-NEMA-like)."""
    ds = pydicom.dcmread(path)
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)


def test_files_without_preamble_are_read_and_non_dicom_still_refused(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    folder = write_patient(raw, "mts-1")
    for path in (folder / "S003").iterdir():
        _strip_preamble(path)
    for path in (folder / "S007").iterdir():
        _bare_dataset(path)
    assert all(pydicom.misc.is_dicom(p) is False for p in (folder / "S007").iterdir())
    (folder / "notes.txt").write_text("SOPClassUID 1.2.3 but not DICOM\n" * 10)
    (folder / "random.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())

    result = ingest_cohort(raw, tmp_path / "interim", params())

    assert result.manifest.iloc[0]["status"] == "ok"
    for name in ("flair", "t1c"):
        volume = np.asarray(nib.load(tmp_path / "interim" / "mts-1" / f"{name}.nii.gz").dataobj)
        np.testing.assert_array_equal(volume, expected_volume(6, 16, 12))
    kinds = sorted(p["kind"] for p in result.report["problems"])
    assert kinds == ["not_dicom", "not_dicom"]


def _junk_viewer(folder: Path) -> None:
    (folder / "VIEWER").mkdir(parents=True)
    (folder / "VIEWER" / "viewer.exe").write_bytes(b"MZ" + bytes(500))
    (folder / "AUTORUN.INF").write_text("[autorun]\nopen=VIEWER\\viewer.exe\n")


def _cd_export(source: Path, folder: Path) -> None:
    """``source``'s files as a CD export: DICOMDIR + PT000000/ST000000/SE00000n/IM00000n (pydicom)."""
    fileset = FileSet()
    for path in sorted(source.rglob("*")):
        if path.is_file():
            ds = pydicom.dcmread(path)
            ds.StudyID = "1"  # the DICOMDIR's study record needs it
            fileset.add(ds)
    fileset.write(folder)


def test_a_dicomdir_lists_the_files_to_read(tmp_path: Path) -> None:
    source = write_patient(tmp_path / "source", "mts-1")
    folder = tmp_path / "raw" / "mts-1"
    _cd_export(source, folder)  # DICOMDIR + PT000000/ST000000/SE00000n/IM00000n, as on a CD
    _junk_viewer(folder)
    write_patient(tmp_path / "raw", "mts-2")
    _junk_viewer(tmp_path / "raw" / "mts-2")  # no DICOMDIR: every file is read, the junk is reported

    result = ingest_cohort(tmp_path / "raw", tmp_path / "interim", params())

    rows = result.manifest.set_index("patient")
    assert rows.loc["mts-1", "status"] == "ok" and rows.loc["mts-2", "status"] == "ok"
    problems = [p for p in result.report["problems"]]
    assert {p["patient"] for p in problems} == {"mts-2"} and len(problems) == 2
    notes = [s["reason"] for s in result.report["skipped"] if s["patient"] == "mts-1"]
    assert notes == ["2 file(s) not listed in the DICOMDIR (not read)"]
    volume = np.asarray(nib.load(tmp_path / "interim" / "mts-1" / "t2.nii.gz").dataobj)
    np.testing.assert_array_equal(volume, expected_volume(6, 16, 12))


def test_a_file_missing_from_the_dicomdir_is_reported(tmp_path: Path) -> None:
    source = write_patient(tmp_path / "source", "mts-1")
    folder = tmp_path / "raw" / "mts-1"
    _cd_export(source, folder)
    victim = sorted(p for p in folder.rglob("IM*") if p.is_file())[0]
    victim.unlink()

    result = ingest_cohort(tmp_path / "raw", tmp_path / "interim", params(), salt=None)

    kinds = [p["kind"] for p in result.report["problems"]]
    assert "dicomdir_missing_file" in kinds


def _secondary_capture(path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 300
    ds.SeriesDescription = "AX T1 +C screen"
    ds.Modality = "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = bytes(128)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _four_d(folder: Path) -> None:
    """A T2-named series with 3 images at each of 6 positions (a perfusion-like time series)."""
    for repeat in range(3):
        spec = SeriesSpec("AX T2 perfusion", 50)
        paths = write_series(folder / f"T{repeat}", spec, seed=repeat, uid_seed="4d")
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(path)


def test_series_that_cannot_be_used_are_skipped_with_a_reason(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    folder = write_patient(raw, "mts-1")
    write_series(folder / "S040", SeriesSpec("SAG T2 C-SPINE", 40, body_part="CSPINE"), 1, "spine")
    write_series(
        folder / "S041", SeriesSpec("AX T1 +C MIP", 41, image_type=("DERIVED", "SECONDARY", "MIP")), 2, "m"
    )
    _four_d(folder)
    _secondary_capture(folder / "SC" / "IM0001")
    for path in write_series(folder / "S060", SeriesSpec("AX T1 +C", 60), 3, "ct"):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = (
            "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        )
        ds.save_as(path)

    result = ingest_cohort(raw, tmp_path / "interim", params())

    assert result.manifest.iloc[0]["status"] == "ok" and result.report["problems"] == []
    skipped = _skipped(result)
    assert "not a brain series (BodyPartExamined CSPINE)" in skipped['series 40 "SAG T2 C-SPINE"']
    assert "MIP" in skipped['series 41 "AX T1 +C MIP"']
    assert "4-D series: 3 images at each of 6 slice positions" in skipped['series 50 "AX T2 perfusion"']
    assert "screen capture" in skipped['series 300 "AX T1 +C screen"']
    assert "unsupported SOP class (CT Image Storage)" in skipped['series 60 "AX T1 +C"']


def test_an_empty_folder_is_no_files_and_unmatched_series_are_named_with_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = tmp_path / "raw"
    write_patient(raw, "mts-1")
    (raw / "mts-2").mkdir()
    specs = standard_specs()
    specs["t1c"] = SeriesSpec("AX T1 3D", 7)
    write_patient(raw, "norma-3", specs)

    caplog.set_level(logging.INFO)
    result = ingest_cohort(raw, tmp_path / "interim", params())

    rows = result.manifest.set_index("patient")
    assert rows.loc["mts-2", "reason"] == "no files: the patient folder is empty"
    assert [p["kind"] for p in result.report["problems"] if p["patient"] == "mts-2"] == ["no_files"]
    reason = rows.loc["norma-3", "reason"]
    assert "t1c: no series matched ingest.sequences.t1c" in reason
    assert 'series 7 "AX T1 3D"' in reason and "add a pattern to ingest.sequences" in reason
    assert 'series 7 "AX T1 3D"' in caplog.text and "ingest.sequences.t1c" in caplog.text
    assert '"AX T1 3D" x1' in caplog.text


def _run_stage(
    script: str, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / script), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        env=env,
    )


def test_no_usable_patient_is_a_non_zero_exit_with_one_line(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_patient(raw, "mts-1", [SeriesSpec("AX T2 FLAIR", 3)])
    (raw / "mts-2").mkdir()
    with pytest.raises(UserError, match=r"no usable patient: all 2 patient folder\(s\) were excluded"):
        ingest_cohort(raw, tmp_path / "interim", params())
    assert (tmp_path / "interim" / "report.json").is_file()  # written first, so the user can read it

    completed = _run_stage(
        "ingest.py",
        "--raw-dir",
        str(raw),
        "--out-dir",
        str(tmp_path / "interim2"),
        "--metrics",
        str(tmp_path / "ingest.json"),
        "--params",
        str(REPO / "params.yaml"),
        cwd=tmp_path,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1].startswith("error: no usable patient")
    assert "Traceback" not in completed.stderr


def test_the_demo_marker_is_not_a_stray_entry(tmp_path: Path) -> None:
    from metastases.ingest.keys import DEMO_MARKER, DEMO_MARKER_TEXT

    raw = tmp_path / "raw"
    write_patient(raw, "mts-1")
    (raw / DEMO_MARKER).write_text(DEMO_MARKER_TEXT)
    result = ingest_cohort(raw, tmp_path / "interim", params(patient_key="auto"))
    assert result.report["skipped"] == [] and result.manifest.iloc[0]["patient"] == "mts-1"
    assert json.loads((tmp_path / "interim" / "report.json").read_text())["summary"]["salt_fingerprint"] == ""
    shutil.rmtree(tmp_path / "interim")


def test_a_sequence_in_another_frame_of_reference_is_not_mixed_in(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    folder = write_patient(raw, "mts-1")
    write_patient(raw, "mts-2")
    other_frame = generate_uid()
    for path in (folder / "S003").iterdir():  # the FLAIR: same study, patient repositioned
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = other_frame
        ds.save_as(path)

    result = ingest_cohort(raw, tmp_path / "interim", params())

    row = result.manifest.set_index("patient").loc["mts-1"]
    assert row["status"] == "excluded" and "missing sequence(s): flair" in row["reason"]
    kinds = [p["kind"] for p in result.report["problems"] if p["patient"] == "mts-1"]
    assert kinds == ["mixed_frame_of_reference", "missing_sequence"]
    assert "another frame of reference" in _skipped(result)['series 3 "AX T2 FLAIR"']
    assert other_frame not in json.dumps(result.report)
