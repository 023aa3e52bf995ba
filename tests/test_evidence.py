"""Where the model looked: lesion truth from the generator, array geometry, evidence maps, pointing game,
calibration."""

from __future__ import annotations

import dataclasses
import filecmp
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from torch import nn

from metastases.demo_cohort import build_cohort, cohort_specs
from metastases.demo_cohort.lesions import Lesion
from metastases.demo_cohort.synthetic_patient import lesion_truth, plan_patient, write_patient
from metastases.errors import UserError
from metastases.evaluation.calibration import PlattScaling, brier
from metastases.evaluation.evidence import Evidence, evidence_centre, lesions_in_view, peak_lps, pointing_game
from metastases.ingest.cohort import ingest_cohort
from metastases.lesion_truth import LESIONS_FILE, read_lesions
from metastases.models import SliceMIL, VolumeMIL, build_model, evidence_map, has_evidence
from metastases.models.layers import location_logits
from metastases.params import IngestParams, VolumeParams
from metastases.volumes import GridGeometry, grid_geometry, target_grid

CENTRE = np.array([30.0, -14.0, 18.0])  # template RAS mm, in white matter


def _t1c_volume(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The T1+C series of a generated patient read with pydicom alone: values [n, rows, cols] in geometric
    order, each slice's ImagePositionPatient, the row/column direction cosines and the pixel spacing."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path)
        if "PerFrameFunctionalGroupsSequence" in ds or "LOCALIZER" in ds.ImageType:
            continue
        description = str(ds.SeriesDescription).lower()
        if any(k in description for k in ("+c", "post", "gd", "_ce", "km")):
            files.append(ds)
    assert files, "the test patient must have a classic (one file per slice) T1+C series"
    iop = np.array(files[0].ImageOrientationPatient, float)
    ipp = np.array([ds.ImagePositionPatient for ds in files], float)
    order = np.argsort(ipp @ np.cross(iop[:3], iop[3:]))
    values = np.stack([files[k].pixel_array.astype(float) for k in order])
    return values, ipp[order], iop, np.array(files[0].PixelSpacing, float)


def _spec_with_classic_t1c():
    for spec in cohort_specs(12, seed=5, size_scale=0.5):
        plan = plan_patient(spec)
        t1c = next(s for s in plan.series if s.naming.sequence == "t1c")
        if spec.label == "metastases" and not t1c.enhanced:
            return spec, plan
    raise AssertionError("no patient with a classic T1+C series")


def test_lesion_truth_points_at_the_lesion_in_the_dicom_images(tmp_path: Path) -> None:
    """The patient is rendered with and without one known metastasis (same noise); the centroid of the
    T1+C difference, located with ImagePositionPatient/Orientation read by pydicom, is the lesions.csv
    centre (LPS mm) within 2 mm, and the difference reaches out to about the recorded radius."""
    spec, plan = _spec_with_classic_t1c()
    lesion = Lesion("metastasis", CENTRE, 7.0, 0.0, 0.0, np.zeros((3, 4)))  # solid, round, no oedema
    with_lesion = dataclasses.replace(plan, lesions=[lesion])
    write_patient(spec, tmp_path / "with", with_lesion)
    write_patient(spec, tmp_path / "without", dataclasses.replace(plan, lesions=[]))
    a, ipp, iop, spacing = _t1c_volume(tmp_path / "with" / spec.name)
    b, _, _, _ = _t1c_volume(tmp_path / "without" / spec.name)
    weight = np.abs(a - b)
    assert weight.sum() > 0
    k, r, c = np.nonzero(weight)
    points = ipp[k] + c[:, None] * spacing[1] * iop[:3] + r[:, None] * spacing[0] * iop[3:]
    centroid = (points * weight[k, r, c][:, None]).sum(axis=0) / weight[k, r, c].sum()
    [row] = lesion_truth(with_lesion)
    assert row["kind"] == "metastasis" and row["enhancing"] == "yes"
    assert row["diameter_mm"] == pytest.approx(14.0)
    truth = np.array([row["x_mm"], row["y_mm"], row["z_mm"]])
    assert np.linalg.norm(centroid - truth) < 2.0
    strong = points[weight[k, r, c] > 0.5 * weight.max()]
    assert np.linalg.norm(strong - truth, axis=1).max() < 7.0 + 3.0


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cohort(
        tmp_path_factory.mktemp("cohort") / "raw", patients=4, seed=3, workers=1, size_scale=0.25
    )


def test_generator_writes_lesions_for_every_metastasis_patient(small_cohort: Path) -> None:
    lesions = read_lesions(small_cohort)
    assert lesions is not None
    labels = pd.read_csv(small_cohort / "labels.csv")
    positives = set(labels.loc[labels["label"] == "metastases", "patient"])
    with_metastasis = set(lesions.loc[lesions["kind"] == "metastasis", "patient"])
    assert with_metastasis == positives
    assert set(lesions["enhancing"]) <= {"yes", "no"}
    assert (lesions.loc[lesions["kind"] == "mimic", "enhancing"] == "no").all()


def test_ingest_never_reads_the_lesion_truth(small_cohort: Path, tmp_path: Path) -> None:
    """Ingest outputs are the same bytes with and without lesions.csv (so are arrays and training, which
    read only ingest's outputs)."""
    params = IngestParams(workers=1)
    ingest_cohort(small_cohort, tmp_path / "with", params)
    copy = tmp_path / "raw_without"
    shutil.copytree(small_cohort, copy)
    (copy / LESIONS_FILE).unlink()
    ingest_cohort(copy, tmp_path / "without", params)
    comparison = filecmp.dircmp(tmp_path / "with", tmp_path / "without")
    files = [p.relative_to(tmp_path / "with") for p in (tmp_path / "with").rglob("*") if p.is_file()]
    assert len(files) > 10
    for name in files:
        assert (tmp_path / "with" / name).read_bytes() == (tmp_path / "without" / name).read_bytes(), name
    assert not comparison.left_only and not comparison.right_only


def test_a_cohort_without_lesion_truth_is_one_log_line(tmp_path: Path, caplog) -> None:
    with caplog.at_level("INFO"):
        assert read_lesions(tmp_path) is None
    assert "lesions.csv" in caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("patient,lesion\nmts-1,1\n", "missing column"),
        ("patient,lesion,kind,x_mm,y_mm,z_mm,diameter_mm,enhancing\nmts-1,1,tumour,0,0,0,5,yes\n", "kind"),
        ("patient,lesion,kind,x_mm,y_mm,z_mm,diameter_mm,enhancing\nmts-1,1,mimic,a,0,0,5,no\n", "numbers"),
    ],
)
def test_a_bad_lesion_file_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / LESIONS_FILE).write_text(content)
    with pytest.raises(UserError, match=message):
        read_lesions(tmp_path)


def _reference(shape=(40, 44, 12), spacing=(0.9, 0.9, 5.0)) -> nib.Nifti1Image:
    data = np.zeros(shape, np.float32)
    data[6:34, 8:38, :] = 100.0  # a "head" box
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-20.0, -25.0, -30.0]
    return nib.Nifti1Image(data, affine)


@pytest.mark.parametrize("crop", ["head", "none"])
def test_grid_geometry_gives_the_world_position_of_every_array_voxel(crop: str) -> None:
    reference = _reference()
    params = VolumeParams(image_size=32, depth=8, crop=crop)
    world = target_grid(reference, params)
    geometry = GridGeometry.from_json(grid_geometry(reference, params).to_json())
    for index in [(0, 0, 0), (7, 31, 31), (3, 10, 25)]:
        assert geometry.world(*index) == pytest.approx(tuple(world[index]), abs=1e-9)
    # between voxels the position is interpolated linearly
    halfway = (np.asarray(world[2, 5, 6]) + np.asarray(world[3, 5, 6])) / 2
    assert geometry.world(2.5, 5, 6) == pytest.approx(tuple(halfway), abs=1e-9)


def _identity_geometry(size: int = 20) -> GridGeometry:
    """A grid whose array voxel (s, r, c) sits at RAS (-(c - 9.5), -(r - 9.5), 10 s) mm: 1 mm pixels, 10 mm
    slices, centred on the origin (columns run right to left, rows anterior to posterior)."""
    affine = ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 10.0, 0.0), (0.0, 0.0, 0.0, 1.0))
    return GridGeometry(affine, 0.0, float(size), 0.0, float(size), size, tuple(float(k) for k in range(5)))


def test_pointing_game_scores_hits_by_hand() -> None:
    geometry = _identity_geometry()
    # voxel (2, 4, 14): RAS (-4.5, 5.5, 20) -> LPS (4.5, -5.5, 20)
    assert peak_lps(geometry, (2, 4, 14)) == pytest.approx((4.5, -5.5, 20.0))
    heat = np.zeros((5, 20, 20), np.float32)
    evidence = {
        "hit": Evidence("hit", heat, (2, 4, 14), (2.0, 4.0, 14.0)),
        "near": Evidence("near", heat, (2, 4, 14), (2.0, 4.0, 14.0)),
        "miss": Evidence("miss", heat, (2, 4, 14), (2.0, 4.0, 14.0)),
        "normal": Evidence("normal", heat, (2, 4, 14), (2.0, 4.0, 14.0)),
        "no-truth": Evidence("no-truth", heat, (2, 4, 14), (2.0, 4.0, 14.0)),
    }
    lesions = pd.DataFrame(
        [
            # exactly at the peak
            ("hit", 1, "metastasis", 4.5, -5.5, 20.0, 4.0, "yes"),
            # 12 mm away, radius 8 + margin 5 = 13: a hit
            ("near", 1, "metastasis", 4.5, -5.5, 32.0, 16.0, "yes"),
            # 12 mm away, radius 3 + 5 = 8: a miss, even with a mimic at the peak
            ("miss", 1, "metastasis", 4.5, 6.5, 20.0, 6.0, "yes"),
            ("miss", 1, "mimic", 4.5, -5.5, 20.0, 6.0, "no"),
        ],
        columns=["patient", "lesion", "kind", "x_mm", "y_mm", "z_mm", "diameter_mm", "enhancing"],
    )
    labels = {"hit": 1, "near": 1, "miss": 1, "normal": 0, "no-truth": 1}
    geometries = dict.fromkeys(labels, geometry)
    game = pointing_game(evidence, labels, geometries, lesions)
    assert game.hits == {"hit": True, "near": True, "miss": False}
    assert game.localisation == pytest.approx(2 / 3)
    assert game.patients == 3


def test_lesions_in_view_maps_a_lesion_back_to_its_array_voxel() -> None:
    geometry = _identity_geometry()
    lesions = pd.DataFrame(
        [
            ("p", 1, "metastasis", 4.5, -5.5, 20.0, 6.0, "yes"),
            ("p", 2, "metastasis", 0.0, 0.0, 40.0, 6.0, "yes"),
        ],
        columns=["patient", "lesion", "kind", "x_mm", "y_mm", "z_mm", "diameter_mm", "enhancing"],
    )
    [(row, column, radius, kind)] = lesions_in_view(geometry, lesions, "p", 2)
    assert (row, column, radius, kind) == (
        pytest.approx(4.0),
        pytest.approx(14.0),
        pytest.approx(3.0),
        "metastasis",
    )


def test_location_logits_are_the_patient_logit_when_one_location_holds_all_evidence() -> None:
    """With one active location (ReLU features elsewhere 0) the max-pooled patient logit difference is
    that location's class-activation value."""
    head = nn.Linear(4, 2)
    features = torch.zeros(1, 4, 3, 5, 5)
    features[0, :, 1, 2, 3] = torch.tensor([0.5, 2.0, 1.0, 3.0])
    cam = location_logits(features, head)
    logits = head(features.amax(dim=(2, 3, 4)))
    assert cam[0, 1, 2, 3].item() == pytest.approx((logits[0, 1] - logits[0, 0]).item(), abs=1e-6)
    background = (head.bias[1] - head.bias[0]).item()
    assert cam[0, 0, 0, 0].item() == pytest.approx(background, abs=1e-6)


def test_only_the_multiple_instance_models_have_evidence_maps() -> None:
    torch.manual_seed(0)
    slice_mil, volume_mil = SliceMIL(in_channels=60), VolumeMIL(in_channels=3)
    assert evidence_map(slice_mil.eval(), torch.randn(2, 60, 32, 32)).shape == (2, 20, 4, 4)
    assert evidence_map(volume_mil.eval(), torch.randn(2, 3, 20, 32, 32)).shape == (2, 20, 8, 8)
    assert not has_evidence(build_model("alexnet2d", (60, 64, 64)))
    with pytest.raises(ValueError, match="no per-location evidence"):
        evidence_map(build_model("lenet3d", (3, 20, 64, 64)), torch.randn(1, 3, 20, 64, 64))


def test_brier_and_platt_scaling_by_hand() -> None:
    labels = np.array([0, 0, 1, 1])
    assert brier(labels, np.array([0.0, 0.5, 0.5, 1.0])) == pytest.approx((0 + 0.25 + 0.25 + 0) / 4)
    # scores that are right but timid (0.4/0.6): Platt scaling on them spreads them towards 0 and 1
    timid = np.array([0.4, 0.45, 0.4, 0.6, 0.55, 0.6])
    y = np.array([0, 0, 0, 1, 1, 1])
    platt = PlattScaling.fit(y, timid)
    assert platt.slope > 1
    scaled = platt.apply(timid)
    assert np.all(np.diff(scaled[np.argsort(timid)]) >= 0)  # the ranking (AUC) is unchanged
    assert brier(y, scaled) < brier(y, timid)


def test_evidence_centre_is_the_centre_of_mass_of_the_response_around_the_peak() -> None:
    heat = np.zeros((5, 64, 64), np.float32)
    heat[2, 10, 20] = 4.0  # the peak
    heat[3, 10, 20] = 4.0 * 0.9  # the response continues into the next slice ...
    heat[2, 11, 20] = 4.0 * 0.8  # ... and one row down
    heat[0, 50, 50] = 3.0  # a second, weaker response far away: not part of this one
    peak = (2, 10, 20)
    weights = np.array([4.0, 3.6, 3.2]) - 2.0  # above half of the maximum (median 0)
    expected_slice = (2 * weights[0] + 3 * weights[1] + 2 * weights[2]) / weights.sum()
    expected_row = (10 * weights[0] + 10 * weights[1] + 11 * weights[2]) / weights.sum()
    assert evidence_centre(heat, peak) == pytest.approx((expected_slice, expected_row, 20.0))
    flat = np.zeros((5, 64, 64), np.float32)
    assert evidence_centre(flat, (1, 2, 3)) == (1.0, 2.0, 3.0)
