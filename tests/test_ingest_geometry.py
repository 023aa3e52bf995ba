"""Ingest geometry and pixels: slice order, affine (incl. tilt), multi-frame, compression, rescale, dtype."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from ingest_support import (
    SeriesSpec,
    expected_volume,
    params,
    ras_voxel_centres,
    standard_specs,
    write_patient,
)
from metastases.ingest import ingest_cohort


def _run(root: Path, tmp_path: Path, **overrides: object):
    return ingest_cohort(root, tmp_path / "interim", params(**overrides))


def _assert_affine_matches(image: nib.Nifti1Image, spec: SeriesSpec) -> None:
    """Every voxel (i, j, k) maps to the RAS centre computed independently from the writer's IPP/IOP."""
    centres = ras_voxel_centres(spec.geometry())
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in image.shape), indexing="ij"), axis=-1)
    mapped = nib.affines.apply_affine(image.affine, ijk)
    np.testing.assert_allclose(mapped[0, 0, 0], centres[0, 0, 0], atol=1e-3)
    np.testing.assert_allclose(mapped, centres, atol=1e-3)


def test_shuffled_names_and_instance_numbers_give_geometric_order(tmp_path: Path) -> None:
    specs = standard_specs(n_slices=9)
    folder = write_patient(tmp_path / "raw", "mts-1", specs)
    # the writer shuffled names and numbers: make sure neither happens to match the slice order
    flair_paths = sorted((folder / "S003").iterdir())
    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in flair_paths]
    positions = [
        float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in flair_paths
    ]
    assert numbers != sorted(numbers) and positions != sorted(positions)

    result = _run(tmp_path / "raw", tmp_path)

    assert result.manifest["status"].tolist() == ["ok"]
    for name, spec in specs.items():
        image = nib.load(tmp_path / "interim" / "mts-1" / f"{name}.nii.gz")
        assert image.shape == (12, 16, 9)  # columns, rows, slices
        np.testing.assert_array_equal(np.asarray(image.dataobj), expected_volume(9, 16, 12))
        _assert_affine_matches(image, spec)
    # inferior-most slice first: k increases towards superior (+z in RAS and LPS alike)
    assert image.affine[2, 2] > 0


def test_mixed_folder_with_opaque_names(tmp_path: Path) -> None:
    write_patient(tmp_path / "raw", "norma-2", mixed=True)
    files = [p for p in (tmp_path / "raw" / "norma-2").rglob("*") if p.is_file()]
    assert len(files) == 18 and all(p.parent.name == "DICOM" and not p.suffix for p in files)

    result = _run(tmp_path / "raw", tmp_path)

    row = result.manifest.iloc[0]
    assert (row["status"], row["label"]) == ("ok", "normal")
    assert [row[f"{s}_description"] for s in ("flair", "t2", "t1c")] == [
        "AX T2 FLAIR",
        "AX T2 FSE",
        "AX T1 +C",
    ]
    for name in ("flair", "t2", "t1c"):
        data = np.asarray(nib.load(tmp_path / "interim" / row[f"{name}_file"]).dataobj)
        np.testing.assert_array_equal(data, expected_volume(6, 16, 12))


def test_rle_compressed_series(tmp_path: Path) -> None:
    specs = standard_specs(transfer_syntax=RLELossless)
    folder = write_patient(tmp_path / "raw", "mts-3", specs)
    assert pydicom.dcmread(next((folder / "S004").iterdir())).file_meta.TransferSyntaxUID == RLELossless

    _run(tmp_path / "raw", tmp_path)

    data = np.asarray(nib.load(tmp_path / "interim" / "mts-3" / "t2.nii.gz").dataobj)
    np.testing.assert_array_equal(data, expected_volume(6, 16, 12))


def test_enhanced_multiframe_with_frames_out_of_order(tmp_path: Path) -> None:
    specs = standard_specs(enhanced=True, n_slices=7, tilt=8.0)
    folder = write_patient(tmp_path / "raw", "mts-4", specs)
    ds = pydicom.dcmread(next((folder / "S003").iterdir()))
    stored_z = [
        float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence
    ]
    assert ds.NumberOfFrames == 7 and stored_z != sorted(stored_z)

    _run(tmp_path / "raw", tmp_path)

    for name, spec in specs.items():
        image = nib.load(tmp_path / "interim" / "mts-4" / f"{name}.nii.gz")
        np.testing.assert_array_equal(np.asarray(image.dataobj), expected_volume(7, 16, 12))
        _assert_affine_matches(image, spec)


def test_tilted_series_keeps_tilt_in_affine(tmp_path: Path) -> None:
    specs = standard_specs(tilt=15.0, pixel_spacing=0.8, slice_spacing=4.0)
    write_patient(tmp_path / "raw", "mts-5", specs)

    _run(tmp_path / "raw", tmp_path)

    image = nib.load(tmp_path / "interim" / "mts-5" / "flair.nii.gz")
    _assert_affine_matches(image, specs["flair"])
    # Independent check from the raw tags of the first slice: RAS of voxel (0,0,0) is IPP with x, y negated,
    # and voxel (i, j, k) adds i column steps along the row cosine, j row steps along the column cosine.
    datasets = [pydicom.dcmread(p) for p in (tmp_path / "raw" / "mts-5" / "S003").iterdir()]
    iop = np.array(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    first = min(datasets, key=lambda d: np.dot(np.array(d.ImagePositionPatient, float), normal))
    ipp = np.array(first.ImagePositionPatient, float)
    flip = np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(nib.affines.apply_affine(image.affine, [0, 0, 0]), ipp * flip, atol=1e-3)
    i, j, k = 5, 9, 3
    lps = ipp + i * 0.8 * iop[:3] + j * 0.8 * iop[3:] + k * 4.0 * normal
    np.testing.assert_allclose(nib.affines.apply_affine(image.affine, [i, j, k]), lps * flip, atol=1e-3)
    # the slice axis is tilted: it has a y component of sin(15 deg) * 4 mm
    assert abs(image.affine[1, 2]) == pytest.approx(4.0 * np.sin(np.deg2rad(15.0)), abs=1e-3)


def test_rescale_slope_intercept_applied_per_slice(tmp_path: Path) -> None:
    specs = standard_specs(slope=0.5, intercept=-100.0)
    folder = write_patient(tmp_path / "raw", "mts-6", specs)
    # give geometric slice 2 (third from inferior) of the T1+C its own slope
    t1c_paths = sorted((folder / "S007").iterdir())
    by_position = sorted(t1c_paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    ds = pydicom.dcmread(by_position[2])
    ds.RescaleSlope = 2.0
    ds.save_as(by_position[2])

    _run(tmp_path / "raw", tmp_path)

    flair = nib.load(tmp_path / "interim" / "mts-6" / "flair.nii.gz")
    assert flair.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asarray(flair.dataobj), expected_volume(6, 16, 12) * 0.5 - 100.0)
    t1c = np.asarray(nib.load(tmp_path / "interim" / "mts-6" / "t1c.nii.gz").dataobj)
    expected = expected_volume(6, 16, 12) * 0.5 - 100.0
    expected[:, :, 2] = expected_volume(6, 16, 12)[:, :, 2] * 2.0 - 100.0
    np.testing.assert_allclose(t1c, expected)


def test_integral_values_are_int16_and_header_is_clean(tmp_path: Path) -> None:
    write_patient(tmp_path / "raw", "mts-7", standard_specs(intercept=-1024.0))

    _run(tmp_path / "raw", tmp_path)

    image = nib.load(tmp_path / "interim" / "mts-7" / "t2.nii.gz")
    assert image.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected_volume(6, 16, 12) - 1024)
    header = image.header
    assert (
        header["descrip"].item() == b""
        and header["aux_file"].item() == b""
        and header["intent_name"].item() == b""
    )
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
    assert header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(header.get_zooms(), (0.9, 0.9, 5.0), atol=1e-4)
