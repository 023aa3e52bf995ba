"""The demo cohort generator: real DICOM, reproducible bytes, visible lesions, ingest-compatible names."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from ingest_support import classify
from metastases.cli import run_stage
from metastases.demo_cohort import build_cohort, cohort_specs
from metastases.demo_cohort.__main__ import main
from metastases.demo_cohort.export import VENDORS
from metastases.demo_cohort.lesions import Lesion
from metastases.demo_cohort.synthetic_patient import LPS_FROM_RAS, plan_patient, write_patient
from metastases.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SMALL = 0.25  # 64-pixel matrices: same fields of view and slice counts, a fraction of the time
IDENTITY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "AccessionNumber")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cohort(
        tmp_path_factory.mktemp("demo") / "raw", patients=3, seed=11, workers=1, size_scale=SMALL
    )


def read_series(folder: Path) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path)
        series[ds.SeriesInstanceUID].append((path, ds))
    return series


def stack(files: list[tuple[Path, pydicom.Dataset]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Real values ``[n, rows, cols]`` in geometric order, their IPPs, the IOP and the pixel spacing
    (classic or enhanced)."""
    first = files[0][1]
    if "PerFrameFunctionalGroupsSequence" in first:
        shared = first.SharedFunctionalGroupsSequence[0]
        iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
        spacing = np.array(shared.PixelMeasuresSequence[0].PixelSpacing, float)
        ipp = np.array(
            [f.PlanePositionSequence[0].ImagePositionPatient for f in first.PerFrameFunctionalGroupsSequence]
        )
        transform = shared.PixelValueTransformationSequence[0]
        values = first.pixel_array * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
    else:
        iop = np.array(first.ImageOrientationPatient, float)
        spacing = np.array(first.PixelSpacing, float)
        ipp = np.array([ds.ImagePositionPatient for _, ds in files], float)
        values = np.stack(
            [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for _, ds in files]
        )
    order = np.argsort(ipp @ np.cross(iop[:3], iop[3:]))
    return values[order], ipp[order], iop, spacing


def test_every_description_is_recognised_by_the_ingest_patterns() -> None:
    for vendor, styles in VENDORS.items():
        for sequence, descriptions in styles.items():
            for description in descriptions:
                expected = None if sequence == "localizer" else sequence
                assert classify(description) == expected, (vendor, description)


def test_labels_match_patient_folders(cohort: Path) -> None:
    labels = pd.read_csv(cohort / "labels.csv")
    assert list(labels.columns) == ["patient", "label"]
    assert sorted(labels.patient) == sorted(p.name for p in cohort.iterdir() if p.is_dir())
    prefix = {"metastases": "mts-", "normal": "norma-"}
    assert all(
        name.startswith(prefix[label]) for name, label in zip(labels.patient, labels.label, strict=True)
    )
    assert set(labels.label) == {"metastases", "normal"}


def test_files_are_mr_dicom_with_geometry_and_fake_identity(cohort: Path) -> None:
    for patient in sorted(p for p in cohort.iterdir() if p.is_dir()):
        series = read_series(patient)
        sequences = []
        for files in series.values():
            first = files[0][1]
            assert first.Modality == "MR"
            assert first.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1")
            for keyword in IDENTITY_KEYWORDS:
                assert str(first.get(keyword, "")).strip(), (patient.name, keyword)
            assert str(first.PatientName).startswith("FAKE^")
            if "LOCALIZER" in first.ImageType:
                assert classify(first.SeriesDescription) is None
                continue
            values, ipp, iop, _ = stack(files)
            sequences.append(classify(first.SeriesDescription))
            normal = np.cross(iop[:3], iop[3:])
            assert abs(normal[2]) > 0.98, "axial, tilted by a few degrees at most"
            steps = np.diff(ipp @ normal)
            assert np.all((steps > 3.9) & (steps < 6.1))
            assert 16 <= len(values) <= 48
            assert values.max() > 10 * np.median(values[:, :3, :3])  # a head in the middle, air at the corner
            if "PerFrameFunctionalGroupsSequence" not in first:
                assert {"PixelSpacing", "SliceThickness", "ImagePositionPatient"} <= set(first.dir())
                # neither file names nor instance numbers follow the slice order
                by_name = np.array([ds.ImagePositionPatient for _, ds in files], float) @ normal
                assert not np.all(np.diff(by_name) > 0)
                by_number = [
                    ds.InstanceNumber for _, ds in sorted(files, key=lambda f: float(f[1].SliceLocation))
                ]
                assert by_number != sorted(by_number)
        assert {"flair", "t2", "t1c"} <= set(sequences), patient.name


def test_same_seed_gives_identical_bytes_whatever_the_workers(cohort: Path, tmp_path: Path) -> None:
    again = build_cohort(tmp_path / "raw", patients=3, seed=11, workers=2, size_scale=SMALL)
    first = sorted(p.relative_to(cohort) for p in cohort.rglob("*") if p.is_file())
    second = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert first == second
    assert all((cohort / p).read_bytes() == (again / p).read_bytes() for p in first)


def test_another_seed_gives_other_images(tmp_path: Path) -> None:
    a = cohort_specs(4, seed=1)
    b = cohort_specs(4, seed=2)
    heads = [plan_patient(spec).head.linear for spec in (a[0], b[0])]
    assert not np.allclose(*heads)


def test_default_cohort_covers_every_acquisition_variant() -> None:
    plans = [plan_patient(spec) for spec in cohort_specs(60, seed=7)]
    assert sum(p.spec.label == "metastases" for p in plans) == 30
    stacks = [s for p in plans for s in p.series if s.naming.sequence != "localizer"]
    slices = np.array([s.geometries[0].n_slices for s in stacks])
    assert (slices < 20).any() and ((slices >= 20) & (slices <= 40)).any() and (slices > 40).any()
    matrices = np.array([s.geometries[0].rows for s in stacks])
    assert set(matrices) == {256, 512} and 0.1 < np.mean(matrices == 512) < 0.3
    fov = matrices * np.array([s.geometries[0].pixel_spacing[0] for s in stacks])
    assert fov.min() >= 220 and fov.max() <= 240
    assert 0.03 < np.mean([s.enhanced for s in stacks]) < 0.2
    assert 0.2 < np.mean([s.compressed for s in stacks]) < 0.8
    assert any(s.scale.slope != 1 for s in stacks)
    assert {p.layout for p in plans} >= {"flat", "series_folders"}
    assert any(s.naming.sequence == "localizer" for p in plans for s in p.series)
    assert any(sum(s.naming.sequence == "flair" for s in p.series) == 2 for p in plans)
    per_patient = [[2 * x.radius for x in p.lesions if x.kind == "metastasis"] for p in plans]
    sizes = [size for patient in per_patient for size in patient]
    assert min(sizes) >= 3 and max(sizes) <= 20
    assert all(max(patient) >= 10 for patient in per_patient if patient), "one dominant lesion each"
    assert np.median([size for patient in per_patient for size in patient[1:]]) < 10, "others mostly small"
    assert all(
        1 <= sum(x.kind == "metastasis" for x in p.lesions) <= 4
        for p in plans
        if p.spec.label == "metastases"
    )
    assert any(lesion.kind == "mimic" for p in plans if p.spec.label == "normal" for lesion in p.lesions)


def _ball_values(files, centre_lps: np.ndarray, radius: float) -> np.ndarray:
    values, ipp, iop, spacing = stack(files)
    rows, cols = values.shape[1:]
    r, c = np.mgrid[:rows, :cols]
    points = ipp[:, None, None, :] + (
        c[..., None] * spacing[1] * iop[:3] + r[..., None] * spacing[0] * iop[3:]
    )
    return values[np.linalg.norm(points - centre_lps, axis=-1) <= radius]


@pytest.mark.parametrize("kind", ["metastasis", "mimic"])
def test_lesion_shows_on_the_right_sequences(tmp_path: Path, kind: str) -> None:
    """A 14 mm metastasis enhances on T1+C and is bright on FLAIR; a 6 mm mimic is bright on FLAIR only.
    Each is compared with the mirror-image point of the (symmetric) template in the other hemisphere."""
    label = "metastases" if kind == "metastasis" else "normal"
    spec = dataclasses.replace(next(s for s in cohort_specs(4, seed=5, size_scale=0.5) if s.label == label))
    centre = np.array([32.0, -12.0, 20.0])
    if kind == "metastasis":
        radius, lesion = 7.0, Lesion(kind, centre, 7.0, 4.5, 18.0, np.zeros((3, 4)))
    else:
        radius, lesion = 3.0, Lesion(kind, centre, 3.0, 0.0, 0.0, np.zeros((3, 4)))
    plan = dataclasses.replace(plan_patient(spec), lesions=[lesion])
    write_patient(spec, tmp_path, plan)
    by_sequence = {}
    for files in read_series(tmp_path / spec.name).values():
        sequence = classify(files[0][1].SeriesDescription)
        if sequence and "LOCALIZER" not in files[0][1].ImageType:
            by_sequence[sequence] = files
    to_lps = lambda u: plan.head.to_patient(u[None])[0] * LPS_FROM_RAS  # noqa: E731
    mirror = centre * np.array([-1.0, 1.0, 1.0])
    t1c = [_ball_values(by_sequence["t1c"], to_lps(p), radius + 1) for p in (centre, mirror)]
    # the metastasis' FLAIR signal is mostly its oedema, out to twice its radius
    reach = 1.7 * radius if kind == "metastasis" else radius + 1
    flair = [_ball_values(by_sequence["flair"], to_lps(p), reach) for p in (centre, mirror)]
    assert min(map(len, t1c + flair)) > 0
    if kind == "metastasis":
        assert t1c[0].max() > 1.25 * t1c[1].max()
        assert flair[0].mean() > 1.2 * flair[1].mean()
    else:
        assert t1c[0].max() < 1.1 * t1c[1].max()
        assert flair[0].max() > 1.15 * flair[1].max()


def test_refuses_a_folder_that_is_not_a_cohort(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        build_cohort(tmp_path, patients=1, size_scale=SMALL)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_replaces_a_previous_cohort(tmp_path: Path) -> None:
    out = build_cohort(tmp_path / "raw", patients=2, seed=3, workers=1, size_scale=SMALL)
    (out / "mts-1" / "stale").mkdir()
    (out / "mts-1" / "stale" / "IM99999").write_bytes(
        next(p for p in out.rglob("IM*") if p.is_file()).read_bytes()
    )
    build_cohort(out, patients=1, seed=3, workers=1, size_scale=SMALL)
    assert sorted(p.name for p in out.iterdir()) == [
        "DEMO_COHORT.txt",
        "labels.csv",
        "lesions.csv",
        cohort_specs(1, 3)[0].name,
    ]
    assert not list(out.rglob("IM99999"))


@pytest.mark.parametrize(
    "args", [["--patients", "0"], ["--patients", "many"], ["--workers", "0"], ["--bogus"]]
)
def test_bad_arguments_give_one_line(
    tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_stage(main, [str(tmp_path / "raw"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert not (tmp_path / "raw").exists()
