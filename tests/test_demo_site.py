"""Site profiles of the demo cohort: site a's bytes never change, site b is another hospital that ingests."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from ingest_support import classify
from metastases.cli import run_stage
from metastases.demo_cohort import build_cohort, cohort_specs
from metastases.demo_cohort.__main__ import main
from metastases.demo_cohort.export import VENDORS
from metastases.demo_cohort.site import SITE_B_VENDORS, SITES
from metastases.demo_cohort.synthetic_patient import plan_patient
from metastases.errors import ParamsError
from metastases.ingest import ingest_cohort
from metastases.lesion_truth import read_lesions
from metastases.params import IngestParams, section

REPO = Path(__file__).resolve().parents[1]
TINY = 0.1  # matrices of 26 (site a) or 19 (site b) pixels: same fields of view and slice counts

# sha256 of each entry of build_cohort(patients=3, seed=18, workers=1, size_scale=0.1), computed with the
# generator as it was before site profiles existed (commit c9ddc41, run from another checkout), NOT with
# the code under test: site a must stay byte-for-byte what it was. A folder's digest is that of
# :func:`_digest`. Same library versions as the project's lock file; a new numpy/pydicom may need them
# recomputed from that commit.
SITE_A_SEED_18 = {
    "DEMO_COHORT.txt": "023124d92c39c8d52df64e9905edcbfa2c729bdcc28f25184159a3d0c6f3920e",
    "labels.csv": "e4d01b3167c680545c8366e78c1568ecda8686f98d24321cad99613555bf7ce8",
    "lesions.csv": "44046c2cf9cf94bf2e29c085c03e3a446538143829d4093d9e34610a4efc368d",
    "mts-1": "5270588f38ee0ebee513fcbeeaee45f16114f4722a1a6bca7e78209475ab0540",
    "mts-2": "b4e334502b50dc280d44f2d53dda8e94081eaed2cd52e085bd3be5fde1993c5d",
    "norma-1": "15f308853f3cb6ae796fc5a7c3fc347ad3c3babfd1a7b5f4cf43515d9ee37a7b",
}


def _digest(path: Path) -> str:
    """sha256 of a file, or of a folder: its files' relative paths and sha256 in sorted order."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def _series_headers(cohort: Path) -> list[pydicom.Dataset]:
    """One header per series of every patient."""
    headers: dict[str, pydicom.Dataset] = {}
    for path in sorted(p for p in cohort.rglob("*") if p.is_file() and p.parent != cohort):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        headers.setdefault(ds.SeriesInstanceUID, ds)
    return list(headers.values())


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both sites from the same seed, tiny."""
    root = tmp_path_factory.mktemp("sites")
    return {
        site: build_cohort(root / site, patients=3, seed=18, workers=1, size_scale=TINY, site=site)
        for site in ("a", "b")
    }


def test_site_a_is_byte_for_byte_the_original_generator(sites: dict[str, Path]) -> None:
    assert {p.name: _digest(p) for p in sorted(sites["a"].iterdir())} == SITE_A_SEED_18


def test_the_default_site_is_a() -> None:
    assert cohort_specs(3, seed=18) == cohort_specs(3, seed=18, site="a")
    assert [s.site for s in cohort_specs(3, seed=18)] == ["a"] * 3


def test_every_site_b_description_is_recognised_and_none_is_site_a_s() -> None:
    site_a = {d for styles in VENDORS.values() for options in styles.values() for d in options}
    for styles in SITE_B_VENDORS.values():
        for sequence, descriptions in styles.items():
            for description in descriptions:
                assert classify(description) == (None if sequence == "localizer" else sequence), description
                assert description not in site_a
    assert not set(SITE_B_VENDORS) & set(VENDORS)


def test_site_b_has_its_own_names_uids_vendor_and_protocol(sites: dict[str, Path]) -> None:
    a, b = (_series_headers(sites[site]) for site in ("a", "b"))
    assert {ds.Manufacturer for ds in a} <= set(VENDORS)
    assert {ds.Manufacturer for ds in b} == set(SITE_B_VENDORS)
    assert not {ds.SeriesDescription for ds in a} & {ds.SeriesDescription for ds in b}
    assert not {ds.StudyInstanceUID for ds in a} & {ds.StudyInstanceUID for ds in b}
    assert not {ds.PatientID for ds in a} & {ds.PatientID for ds in b}
    names = {site: sorted(p.name for p in sites[site].iterdir() if p.is_dir()) for site in ("a", "b")}
    assert names["b"] == ["mts-1001", "mts-1002", "norma-1001"]
    assert not set(names["a"]) & set(names["b"])
    stacks = [ds for ds in b if "LOCALIZER" not in ds.ImageType]
    thickness = [
        float(ds.SliceThickness)
        if "SliceThickness" in ds
        else float(ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness)
        for ds in stacks
    ]
    assert thickness == [3.0] * len(stacks)
    assert {int(ds.Rows) for ds in stacks} == {round(192 * TINY)}


def test_site_b_draws_are_not_site_a_s() -> None:
    """Same seed and index, another site: another head, not site a's tilted."""
    a, b = (plan_patient(cohort_specs(1, seed=18, size_scale=TINY, site=site)[0]) for site in ("a", "b"))
    assert not (a.head.translation == b.head.translation).all()
    assert a.identity["PatientID"] != b.identity["PatientID"]


def test_every_site_b_patient_has_an_enhancing_mimic(sites: dict[str, Path]) -> None:
    lesions = read_lesions(sites["b"])
    assert lesions is not None
    labels = pd.read_csv(sites["b"] / "labels.csv")
    enhancing_mimics = lesions[(lesions["kind"] == "mimic") & (lesions["enhancing"] == "yes")]
    assert set(enhancing_mimics["patient"]) == set(labels["patient"])
    site_a = read_lesions(sites["a"])
    assert site_a is not None
    assert (site_a.loc[site_a["kind"] == "mimic", "enhancing"] == "no").all()


def test_site_b_vessels_enhance_and_are_dark_on_t2() -> None:
    plan = plan_patient(cohort_specs(1, seed=18, size_scale=TINY, site="b")[0])
    assert 2 <= sum(lesion.kind == "vessel" for lesion in plan.lesions) <= 4
    signals = plan.signals
    assert signals["t1c"]["vessel"] > signals["t1c"]["wm"]
    assert (
        signals["t2"]["vessel"] < signals["t2"]["wm"] and signals["flair"]["vessel"] < signals["flair"]["wm"]
    )
    assert signals["t1c"]["fat"] > 1.25 * 1.05  # brighter scalp fat than any site a patient's


def test_site_b_ingests_with_the_default_params(sites: dict[str, Path], tmp_path: Path) -> None:
    params = dataclasses.replace(section(IngestParams, "ingest", REPO / "params.yaml"), workers=1)
    result = ingest_cohort(sites["b"], tmp_path / "interim", params)
    assert result.metrics["patients_ok"] == 3
    assert result.metrics["patients_excluded"] == 0


def test_an_unknown_site_is_a_params_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ParamsError, match="site"):
        build_cohort(tmp_path / "raw", patients=1, size_scale=TINY, site="c")
    with pytest.raises(ParamsError, match="site"):
        cohort_specs(1, seed=1, site="c")
    assert run_stage(main, [str(tmp_path / "raw"), "--site", "c"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "--site" in err
    assert not (tmp_path / "raw").exists()
    assert set(SITES) == {"a", "b"}
