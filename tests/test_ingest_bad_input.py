"""Bad input is reported (patient key, series, reason) in report.json and metrics, and the rest goes on.
Also: what is skipped and why, and which of two matching series is chosen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from ingest_support import SeriesSpec, params, standard_specs, write_patient, write_series
from metastases.dicom_writer import SeriesGeometry
from metastases.ingest import MANIFEST_COLUMNS, ingest_cohort
from metastases.params import SEQUENCES


def _by_position(folder: Path) -> list[Path]:
    """The files of an axial, untilted series from inferior to superior (read straight from the tags)."""
    return sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))


def _edit(path: Path, **values: object) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


@pytest.fixture(scope="module")
def bad_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    raw = tmp_path_factory.mktemp("bad") / "raw"
    # mts-1: fine, plus a text file, a header-truncated copy and a copy with an unknown transfer syntax
    folder = write_patient(raw, "mts-1")
    (folder / "README.txt").write_text("exported by PACS\n")
    source = next((folder / "S004").iterdir())
    (folder / "S004" / "IM99998").write_bytes(source.read_bytes()[:400])
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = generate_uid(), 50, "AX DWI"
    ds.save_as(folder / "S004" / "IM99999")
    # mts-2: one FLAIR slice with another matrix
    folder = write_patient(raw, "mts-2")
    odd = _by_position(folder / "S003")[3]
    _edit(odd, Rows=8, Columns=8, PixelData=np.zeros((8, 8), np.uint16).tobytes())
    # mts-3: T2 with two slices at one position, and a later good T2 repeat with fewer slices
    specs = standard_specs()
    write_patient(raw, "mts-3", [*specs.values(), SeriesSpec("AX T2 FSE", 14, n_slices=5)])
    slices = _by_position(raw / "mts-3" / "S004")
    _edit(slices[4], ImagePositionPatient=pydicom.dcmread(slices[3]).ImagePositionPatient)
    # mts-4: T1+C with a missing middle slice (a gap)
    write_patient(raw, "mts-4")
    _by_position(raw / "mts-4" / "S007")[2].unlink()
    # norma-5: no T1+C at all
    write_patient(raw, "norma-5", [standard_specs()["flair"], standard_specs()["t2"]])
    # other-6: no label anywhere
    write_patient(raw, "other-6")
    # norma-7: FLAIR stored as JPEG 2000 that no decoder can read
    write_patient(raw, "norma-7")
    for path in (raw / "norma-7" / "S003").iterdir():
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = encapsulate([b"\x00\x01not a codestream" * 4])
        ds.save_as(path)
    # norma-8: one FLAIR file cut inside its pixel data
    write_patient(raw, "norma-8")
    cut = _by_position(raw / "norma-8" / "S003")[1]
    cut.write_bytes(cut.read_bytes()[:-100])
    # norma-9: fine, everything in one folder
    write_patient(raw, "norma-9", mixed=True)
    (raw / "labels.csv").write_text("patient,label\nmts-1,Metastases\nmts-99,normal\n")

    result = ingest_cohort(raw, raw.parent / "interim", params(workers=2))
    return raw.parent, result


def _problems(result, patient: str) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    return [
        (p["kind"], p["series"], p["reason"]) for p in result.report["problems"] if p["patient"] == patient
    ]


def test_manifest_lists_every_patient_in_order(bad_cohort) -> None:  # type: ignore[no-untyped-def]
    out, _ = bad_cohort
    manifest = pd.read_csv(out / "interim" / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert manifest["patient"].tolist() == [
        "mts-1", "mts-2", "mts-3", "mts-4", "norma-5", "norma-7", "norma-8", "norma-9", "other-6"
    ]  # fmt: skip
    status = dict(zip(manifest["patient"], manifest["status"], strict=True))
    assert [p for p, s in status.items() if s == "ok"] == ["mts-1", "mts-3", "norma-9"]
    for row in manifest.itertuples():
        files = [getattr(row, f"{s}_file") for s in SEQUENCES]
        if row.status == "ok":
            assert all((out / "interim" / f).is_file() for f in files)
        else:
            assert row.reason and files == ["", "", ""]
            assert not (out / "interim" / row.patient).exists()


def test_file_level_problems_do_not_stop_the_patient(bad_cohort) -> None:  # type: ignore[no-untyped-def]
    _, result = bad_cohort
    problems = _problems(result, "mts-1")
    kinds = sorted(kind for kind, _, _ in problems)
    assert kinds == ["not_dicom", "truncated", "unknown_transfer_syntax"]
    assert ("unknown_transfer_syntax", 'series 50 "AX DWI"') in [(k, s) for k, s, _ in problems]
    reasons = " | ".join(reason for _, _, reason in problems)
    assert "README.txt" in reasons and "S004/IM99998" in reasons and "1.2.3.4.5.6.7" in reasons
    assert result.manifest.set_index("patient").loc["mts-1", "label"] == "metastases"


@pytest.mark.parametrize(
    ("patient", "kind", "series", "words"),
    [
        ("mts-2", "inconsistent", 'series 3 "AX T2 FLAIR"', "matrix"),
        ("mts-2", "missing_sequence", "", "flair"),
        ("mts-3", "duplicate_slices", 'series 4 "AX T2 FSE"', "position"),
        ("mts-4", "uneven_spacing", 'series 7 "AX T1 +C"', "gap"),
        ("mts-4", "missing_sequence", "", "t1c"),
        ("norma-5", "missing_sequence", "", "t1c"),
        ("other-6", "no_label", "", "no label"),
        ("norma-7", "undecodable", 'series 3 "AX T2 FLAIR"', "JPEG 2000"),
        ("norma-8", "truncated", 'series 3 "AX T2 FLAIR"', "truncated"),
        ("mts-99", "label_without_patient", "", "no folder"),
    ],
)
def test_each_bad_input_is_reported(bad_cohort, patient: str, kind: str, series: str, words: str) -> None:  # type: ignore[no-untyped-def]
    _, result = bad_cohort
    matches = [(s, r) for k, s, r in _problems(result, patient) if k == kind]
    assert matches, _problems(result, patient)
    assert any(s == series and words in r for s, r in matches), matches
    assert result.metrics[f"problems_{kind}"] >= 1


def test_duplicate_series_falls_back_to_the_good_repeat(bad_cohort) -> None:  # type: ignore[no-untyped-def]
    _, result = bad_cohort
    row = result.manifest.set_index("patient").loc["mts-3"]
    assert (row["status"], row["t2_slices"]) == ("ok", 5)


def test_report_and_metrics_files(bad_cohort) -> None:  # type: ignore[no-untyped-def]
    out, result = bad_cohort
    report = json.loads((out / "interim" / "report.json").read_text())
    assert set(report) == {"problems", "skipped", "studies", "summary"}
    assert all(set(p) >= {"patient", "series", "reason"} for p in report["problems"])
    metrics = result.metrics
    assert (
        metrics["patients_found"] == 9 and metrics["patients_ok"] == 3 and metrics["patients_excluded"] == 6
    )
    assert metrics["problems"] == len(report["problems"])
    assert all(isinstance(v, int) for v in metrics.values())


def _sagittal(number: int) -> SeriesSpec:
    class Sagittal(SeriesSpec):
        def geometry(self) -> SeriesGeometry:
            return SeriesGeometry(
                16, 12, (0.9, 0.9), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-20.0, -50.0, 60.0), 5.0, 6
            )

    return Sagittal("SAG T2 FSE", number)


def _write_sr(path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 99
    ds.SeriesDescription = "Dose Report"
    ds.Modality = "SR"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_skipped_series_are_listed_with_reasons(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    specs = standard_specs()
    # recognised from ProtocolName; more slices than the sagittal T2, so chosen over it
    specs["t2"] = SeriesSpec("Series 4", 4, n_slices=8, protocol_name="t2_tse_tra")
    extras = [
        SeriesSpec("3-PLANE LOC", 1, n_slices=3, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        SeriesSpec("AX FLAIR scout", 2, n_slices=3),
        SeriesSpec("AX T1 +C MPR", 20, image_type=("DERIVED", "SECONDARY", "MPR")),
        SeriesSpec("DWI b1000", 5),
        _sagittal(6),
    ]
    folder = write_patient(raw, "mts-1", [*specs.values(), *extras])
    _write_sr(folder / "SR" / "IM00001")

    result = ingest_cohort(raw, tmp_path / "interim", params())

    assert result.report["problems"] == []
    row = result.manifest.iloc[0]
    assert (row["status"], row["t2_description"]) == ("ok", "Series 4")
    skipped = {s["series"]: s["reason"] for s in result.report["skipped"]}
    assert set(skipped) == {
        'series 1 "3-PLANE LOC"',
        'series 2 "AX FLAIR scout"',
        'series 20 "AX T1 +C MPR"',
        'series 5 "DWI b1000"',
        'series 6 "SAG T2 FSE"',
        'series 99 "Dose Report"',
    }
    assert "LOCALIZER" in skipped['series 1 "3-PLANE LOC"']
    assert (
        "localizer" in skipped['series 2 "AX FLAIR scout"']
        and "3 slice" in skipped['series 2 "AX FLAIR scout"']
    )
    # a DERIVED reformat and a sagittal series are candidates now, each losing to the ORIGINAL axial one
    assert 'series 7 "AX T1 +C" preferred (ORIGINAL before DERIVED' in skipped['series 20 "AX T1 +C MPR"']
    assert "no sequence pattern" in skipped['series 5 "DWI b1000"']
    assert 't2 candidate not chosen: series 4 "Series 4" preferred' in skipped['series 6 "SAG T2 FSE"']
    assert "non-image" in skipped['series 99 "Dose Report"'] and "SR" in skipped['series 99 "Dose Report"']
    assert result.metrics["series_read"] == 9 and result.metrics["skipped"] == 6


@pytest.mark.parametrize(("first_slices", "chosen", "other"), [(6, 9, 3), (8, 3, 9)])
def test_choice_between_two_matching_series(
    tmp_path: Path, first_slices: int, chosen: int, other: int
) -> None:
    raw = tmp_path / "raw"
    specs = standard_specs()
    specs["flair"] = SeriesSpec("AX FLAIR", 3, n_slices=first_slices)
    folder = write_patient(raw, "norma-1", specs)
    write_series(folder / "S009", SeriesSpec("AX FLAIR", 9, n_slices=6), seed=1, uid_seed="repeat")

    result = ingest_cohort(raw, tmp_path / "interim", params())

    row = result.manifest.iloc[0]
    assert row["status"] == "ok" and row["flair_slices"] == (6 if chosen == 9 else 8)
    assert f'flair: chose series {chosen} "AX FLAIR" of 2 candidates' in row["reason"]
    skipped = result.report["skipped"]
    assert [s["series"] for s in skipped] == [f'series {other} "AX FLAIR"']
    assert f'series {chosen} "AX FLAIR" preferred' in skipped[0]["reason"]
