"""From ingested volumes to the training arrays, on a real (tiny) demo cohort."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metastases.arrays import array_shape, build_arrays, load_index
from metastases.demo_cohort.build import build_cohort
from metastases.errors import ParamsError, UserError
from metastases.ingest import ingest_cohort
from metastases.montage import sample_montage
from metastases.params import IngestParams, TrainingParams, VolumeParams, cpu_workers, from_mapping
from params_support import committed_params


@pytest.fixture(scope="module")
def interim(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    build_cohort(root / "raw", patients=2, seed=5, workers=1, size_scale=0.25)
    ingest_cohort(root / "raw", root / "interim", IngestParams(workers=1))
    return root / "interim"


@pytest.mark.parametrize(("dim", "shape"), [("2d", (60, 512, 512)), ("3d", (3, 20, 512, 512))])
def test_512_geometry_gives_the_original_study_shapes(interim, tmp_path, dim, shape):
    params = VolumeParams(image_size=512)
    index = build_arrays(interim, tmp_path / dim, params, dim)
    assert array_shape(params, dim) == shape
    assert sorted(index["label"]) == [0, 1]
    for patient in index["patient"]:
        array = np.load(tmp_path / dim / f"{patient}.npy", mmap_mode="r")
        assert isinstance(array, np.memmap), "arrays must stream from disk"
        assert array.shape == shape and array.dtype == np.float16
        assert np.isfinite(array).all()


def test_2d_channels_are_the_3d_sequences_times_slices(interim, tmp_path):
    params = VolumeParams(image_size=48, depth_mode="resample")
    build_arrays(interim, tmp_path / "2d", params, "2d")
    index = build_arrays(interim, tmp_path / "3d", params, "3d")
    patient = index["patient"][0]
    flat = np.load(tmp_path / "2d" / f"{patient}.npy")
    stacked = np.load(tmp_path / "3d" / f"{patient}.npy")
    assert np.array_equal(flat[20:40], stacked[1]), "channels 20-39 are the 20 T2 slices"
    # each sequence is normalised on its own: z-scores centred near 0 with unit spread
    for sequence in stacked.astype(np.float32):
        assert abs(sequence.mean()) < 0.05 and abs(sequence.std() - 1) < 0.05


def test_stale_arrays_are_removed_and_index_matches_manifest(interim, tmp_path):
    out = tmp_path / "2d"
    out.mkdir()
    (out / "gone-1.npy").write_bytes(b"old")
    build_arrays(interim, out, VolumeParams(image_size=32), "2d")
    index = load_index(out)
    manifest = pd.read_csv(interim / "manifest.csv")
    assert sorted(index["patient"]) == sorted(manifest.loc[manifest["status"] == "ok", "patient"])
    assert sorted(p.stem for p in out.glob("*.npy")) == sorted(index["patient"])
    sample_montage(out, index, tmp_path / "samples.png", per_class=1)
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_manifest_says_to_run_ingest(tmp_path):
    with pytest.raises(UserError, match="run the ingest stage"):
        build_arrays(tmp_path, tmp_path / "out", VolumeParams(image_size=32), "2d")


def test_all_cores_write_the_same_bytes_as_one_worker(interim, tmp_path):
    """ingest.workers auto (one per core) and the array stages' default (0: one per core) change only the
    speed: interim volumes, manifest and arrays are byte-identical to those of a single worker."""
    raw = interim.parent / "raw"
    ingest_cohort(raw, tmp_path / "interim", IngestParams(workers="auto"))
    for path in sorted(p for p in interim.rglob("*") if p.is_file() and p.name != "report.json"):
        assert (tmp_path / "interim" / path.relative_to(interim)).read_bytes() == path.read_bytes(), path
    params = VolumeParams(image_size=48)
    build_arrays(interim, tmp_path / "one", params, "3d", workers=1)
    build_arrays(interim, tmp_path / "all", params, "3d", workers=cpu_workers(0))
    written = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "all").iterdir()) and len(written) == 4
    for name in written:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "all" / name).read_bytes(), name


def test_workers_auto_or_zero_means_one_per_core():
    assert cpu_workers("auto") == cpu_workers(0) == (os.cpu_count() or 1)
    assert cpu_workers(3) == 3
    with pytest.raises(ParamsError, match=r"ingest.workers: a whole number >= 0 or auto"):
        from_mapping(IngestParams, "ingest", {"workers": "all"})
    with pytest.raises(ParamsError, match=r"train_2d.num_workers: a whole number >= 0 or auto"):
        from_mapping(
            TrainingParams, "train_2d", {**committed_params()["train_2d"], "dim": "2d", "num_workers": -1}
        )
