"""Any acquisition plane: a 3D sagittal FLAIR (1 mm isotropic) and a coronal T2 with an axial T1+C give
the same slice-2d / stack-3d arrays as the same anatomy acquired axially; a non-axial T1+C gets an axial
grid over its field of view.

The anatomy is one smooth function of patient position (LPS mm), sampled at each series' own voxel
centres, so every series shows the same head whatever its plane; the arrays stage must bring them onto
the T1+C grid through the NIfTI affines that ingest writes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ingest_support import params
from metastases.dicom_writer import SeriesGeometry, SeriesHeader, plane_geometry, write_classic_series
from metastases.ingest import ingest_cohort
from metastases.params import SEQUENCES, VolumeParams
from metastases.volumes import patient_tensor

FOV = 40  # mm: a small "head" keeps a 1 mm isotropic series tiny
DESCRIPTIONS = {"flair": "FLAIR", "t2": "T2 FSE", "t1c": "T1 +C"}
NUMBERS = {"flair": 3, "t2": 4, "t1c": 7}


WAVES = {"flair": (0.8, 0.36, 0.48), "t2": (-0.48, 0.8, 0.36), "t1c": (0.36, -0.48, 0.8)}
"""Per-sequence direction of a 16 mm intensity wave: no axis flip maps one onto itself or another."""


def anatomy(lps: np.ndarray, sequence: str) -> np.ndarray:
    """Stored values: a smooth ellipsoidal head whose inside varies along a sequence-specific wave (the
    background has the mean value, so correlations see the wave, not the outline of the head)."""
    x, y, z = lps[..., 0], lps[..., 1], lps[..., 2]
    radius = np.sqrt((x / 16.0) ** 2 + (y / 18.0) ** 2 + (z / 15.0) ** 2)
    head = 1.0 / (1.0 + np.exp((radius - 1.0) * 12.0))
    d = np.asarray(WAVES[sequence]) / np.linalg.norm(WAVES[sequence])
    wave = np.cos(2 * np.pi * (d[0] * x + d[1] * y + d[2] * z + 3.0) / 16.0)
    return np.clip(1000 + 700 * head * wave, 0, 4000).astype(np.uint16)


def _write(folder: Path, sequence: str, geometry: SeriesGeometry) -> None:
    header = SeriesHeader(
        series_description=f"{geometry_plane(geometry)} {DESCRIPTIONS[sequence]}",
        series_number=NUMBERS[sequence],
        uid_seed=f"{folder.name}-{sequence}",
        study_seed=folder.name,
    )
    pixels = anatomy(geometry.voxel_centres(), sequence)
    paths = [folder / sequence / f"IM{k:04d}" for k in range(geometry.n_slices)]
    write_classic_series(pixels, geometry, header, paths)


def geometry_plane(geometry: SeriesGeometry) -> str:
    return ("SAG", "COR", "AX")[int(np.argmax(np.abs(geometry.normal)))]


def _thick(plane: str) -> SeriesGeometry:
    """A 2D series: 1 mm in-plane, 3 mm slices over the field of view."""
    return plane_geometry(
        plane, rows=FOV, columns=FOV, n_slices=FOV // 3 + 1, pixel_spacing=1.0, slice_spacing=3.0
    )


def _iso(plane: str) -> SeriesGeometry:
    """A 3D series: 1 mm isotropic."""
    return plane_geometry(plane, rows=FOV, columns=FOV, n_slices=FOV, pixel_spacing=1.0, slice_spacing=1.0)


@pytest.fixture(scope="module")
def interim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("planes") / "raw"
    layouts = {
        "mts-1": {"flair": _thick("axial"), "t2": _thick("axial"), "t1c": _thick("axial")},
        "mts-2": {"flair": _iso("sagittal"), "t2": _thick("coronal"), "t1c": _thick("axial")},
        "mts-3": {"flair": _thick("axial"), "t2": _thick("axial"), "t1c": _iso("sagittal")},
    }
    for name, series in layouts.items():
        for sequence, geometry in series.items():
            _write(raw / name, sequence, geometry)
    out = raw.parent / "interim"
    result = ingest_cohort(raw, out, params())
    assert (result.manifest["status"] == "ok").all(), result.report["problems"]
    return out


def test_non_axial_series_are_ingested_with_their_plane(interim: Path) -> None:
    import pandas as pd

    manifest = pd.read_csv(interim / "manifest.csv", dtype=str, keep_default_na=False).set_index("patient")
    assert manifest.loc["mts-2", ["flair_plane", "t2_plane", "t1c_plane"]].tolist() == [
        "sagittal",
        "coronal",
        "axial",
    ]
    assert manifest.loc["mts-2", "flair_voxel_mm"] == "1.00x1.00x1.00"
    # the affine puts each voxel where the anatomy function was sampled: compare world coordinates
    image = nib.load(interim / "mts-2" / "flair.nii.gz")
    data = np.asarray(image.dataobj)
    i, j, k = 5, 31, 17
    ras = image.affine[:3, :3] @ np.array([i, j, k]) + image.affine[:3, 3]
    assert data[i, j, k] == anatomy(ras * np.array([-1.0, -1.0, 1.0]), "flair")


@pytest.mark.parametrize(
    "volume_params",
    [VolumeParams(image_size=32, depth=8, crop="none")],
)
def test_sagittal_and_coronal_series_give_the_arrays_of_an_axial_acquisition(
    interim: Path, volume_params: VolumeParams
) -> None:
    paths = {name: {s: interim / name / f"{s}.nii.gz" for s in SEQUENCES} for name in ("mts-1", "mts-2")}
    axial = patient_tensor(paths["mts-1"], volume_params)
    mixed = patient_tensor(paths["mts-2"], volume_params)
    assert axial.shape == mixed.shape == (3, 8, 32, 32)
    np.testing.assert_array_equal(axial[2], mixed[2])  # the same axial T1+C
    for channel, sequence in enumerate(SEQUENCES[:2]):
        correlation = float(np.corrcoef(axial[channel].ravel(), mixed[channel].ravel())[0, 1])
        assert correlation > 0.99, (sequence, correlation)
        other = float(np.corrcoef(axial[1 - channel].ravel(), mixed[channel].ravel())[0, 1])
        assert abs(other) < 0.3, (sequence, other)  # and the test can tell one anatomy from another
    # the default head crop too (its grid reaches past the field of view: zeros alike in both)
    cropped = dataclasses.replace(volume_params, crop="head")
    axial, mixed = (patient_tensor(paths[name], cropped) for name in ("mts-1", "mts-2"))
    for channel in range(2):
        assert float(np.corrcoef(axial[channel].ravel(), mixed[channel].ravel())[0, 1]) > 0.99


def test_the_correlation_sees_a_wrong_affine(interim: Path, tmp_path: Path) -> None:
    """The sagittal FLAIR mirrored left-right (what a sign error in its affine would do) no longer matches."""
    volume_params = VolumeParams(image_size=32, depth=8, crop="none")
    image = nib.load(interim / "mts-2" / "flair.nii.gz")
    nib.save(
        nib.Nifti1Image(np.asarray(image.dataobj)[:, :, ::-1].copy(), image.affine), tmp_path / "flair.nii.gz"
    )
    paths = {s: interim / "mts-2" / f"{s}.nii.gz" for s in SEQUENCES}
    axial = patient_tensor({s: interim / "mts-1" / f"{s}.nii.gz" for s in SEQUENCES}, volume_params)
    wrong = patient_tensor({**paths, "flair": tmp_path / "flair.nii.gz"}, volume_params)
    correlation = float(np.corrcoef(axial[0].ravel(), wrong[0].ravel())[0, 1])
    assert correlation < 0.5, correlation


def test_a_sagittal_t1c_gets_an_axial_grid_over_its_field_of_view(interim: Path) -> None:
    volume_params = VolumeParams(image_size=32, depth=8, crop="none")
    sagittal = patient_tensor({s: interim / "mts-3" / f"{s}.nii.gz" for s in SEQUENCES}, volume_params)
    axial = patient_tensor({s: interim / "mts-1" / f"{s}.nii.gz" for s in SEQUENCES}, volume_params)
    # both cover the same 40 mm cube (the sagittal one 1 mm apart in every direction, the axial one 3 mm
    # between slices): the axial grid built from the sagittal field of view shows the same slices
    for channel in range(3):
        correlation = float(np.corrcoef(axial[channel].ravel(), sagittal[channel].ravel())[0, 1])
        assert correlation > 0.99, (SEQUENCES[channel], correlation)
