"""Builders for the ingest tests: real DICOM series and patient folders written with metastases.dicom_writer.

Every slice carries a known intensity pattern, stored = 1000 * k + 10 * row + column (k = geometric
slice index), so a test can tell from the NIfTI alone whether slices, rows and columns ended up where
they belong.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from pathlib import Path

import numpy as np
import yaml
from pydicom.uid import UID, ExplicitVRLittleEndian

from metastases.dicom_writer import (
    SeriesGeometry,
    SeriesHeader,
    axial_geometry,
    write_classic_series,
    write_enhanced_series,
)
from metastases.params import IngestParams
from params_support import PARAMS_YAML

IDENTITY = {
    "PatientName": "Qzxwvut^Hieronymus",
    "PatientID": "PIDX-9381-7716",
    "PatientBirthDate": "19370412",
    "InstitutionName": "Saint Obscurus Infirmary",
    "AccessionNumber": "ACCN77341029",
    "ReferringPhysicianName": "Drwqpl^Ottoline",
}
"""Distinctive identifying values that must never reach an output (the study date is 19871123)."""
STUDY_DATE = "19871123"

SEQUENCE_DESCRIPTIONS = {"flair": "AX T2 FLAIR", "t2": "AX T2 FSE", "t1c": "AX T1 +C"}
SERIES_NUMBERS = {"flair": 3, "t2": 4, "t1c": 7}


def slice_pattern(n_slices: int, rows: int, columns: int) -> np.ndarray:
    """``[n, rows, columns]`` uint16 stored values 1000 * k + 10 * row + column."""
    k, r, c = np.meshgrid(np.arange(n_slices), np.arange(rows), np.arange(columns), indexing="ij")
    return (1000 * k + 10 * r + c).astype(np.uint16)


def expected_volume(n_slices: int, rows: int, columns: int) -> np.ndarray:
    """The pattern in NIfTI axis order ``[column, row, slice]``."""
    return slice_pattern(n_slices, rows, columns).transpose(2, 1, 0).astype(np.float64)


def ras_voxel_centres(geometry: SeriesGeometry) -> np.ndarray:
    """``[columns, rows, slices, 3]`` RAS centre of every voxel, straight from the writer's geometry."""
    lps = geometry.voxel_centres().transpose(2, 1, 0, 3)
    return lps * np.array([-1.0, -1.0, 1.0])


@dataclasses.dataclass
class SeriesSpec:
    description: str
    number: int
    n_slices: int = 6
    rows: int = 16
    columns: int = 12
    pixel_spacing: float = 0.9
    slice_spacing: float = 5.0
    tilt: float = 0.0
    slope: float = 1.0
    intercept: float = 0.0
    transfer_syntax: UID = ExplicitVRLittleEndian
    enhanced: bool = False
    protocol_name: str | None = None
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND")
    study_seed: str = "study-1"
    """Series of one patient share a study (StudyInstanceUID, FrameOfReferenceUID) unless told otherwise."""
    study_date: str = STUDY_DATE
    study_time: str = "101500"
    body_part: str | None = None

    def geometry(self) -> SeriesGeometry:
        return axial_geometry(
            self.rows,
            self.columns,
            self.n_slices,
            self.pixel_spacing,
            self.slice_spacing,
            self.tilt,
            (1.5, -20.0, 30.0),
        )


def write_series(
    folder: Path, spec: SeriesSpec, seed: int, uid_seed: str, names: list[str] | None = None
) -> list[Path]:
    """Write one series below ``folder`` with shuffled file names and InstanceNumbers; returns its paths."""
    rng = np.random.default_rng(seed)
    geometry = spec.geometry()
    header = SeriesHeader(
        series_description=spec.description,
        series_number=spec.number,
        uid_seed=uid_seed,
        identity=IDENTITY,
        protocol_name=spec.protocol_name,
        rescale_slope=spec.slope,
        rescale_intercept=spec.intercept,
        study_date=spec.study_date,
        image_type=spec.image_type,
        study_seed=spec.study_seed,
        study_time=spec.study_time,
        body_part=spec.body_part,
    )
    pixels = slice_pattern(spec.n_slices, spec.rows, spec.columns)
    if spec.enhanced:
        path = folder / (names[0] if names else f"MF{spec.number:04d}")
        order = [int(i) for i in rng.permutation(spec.n_slices)]
        write_enhanced_series(
            pixels, geometry, header, path, frame_order=order, transfer_syntax=spec.transfer_syntax
        )
        return [path]
    if names is None:
        # opaque names whose sorted order is not the slice order
        names = [f"IM{int(v):05d}" for v in rng.choice(90000, size=spec.n_slices, replace=False) + 10000]
    paths = [folder / name for name in names]
    numbers = [int(v) + 1 for v in rng.permutation(spec.n_slices)]
    write_classic_series(pixels, geometry, header, paths, spec.transfer_syntax, instance_numbers=numbers)
    return paths


def standard_specs(**overrides: object) -> dict[str, SeriesSpec]:
    """The three sequences of a patient, with the same overrides applied to each."""
    return {
        name: SeriesSpec(SEQUENCE_DESCRIPTIONS[name], SERIES_NUMBERS[name], **overrides)  # type: ignore[arg-type]
        for name in SEQUENCE_DESCRIPTIONS
    }


def write_patient(
    root: Path, name: str, specs: dict[str, SeriesSpec] | list[SeriesSpec] | None = None, mixed: bool = False
) -> Path:
    """A patient folder: one sub-folder per series, or (``mixed``) all files of all series in one folder."""
    folder = root / name
    if specs is None:
        specs = standard_specs()
    specs_list = list(specs.values()) if isinstance(specs, dict) else list(specs)
    for index, spec in enumerate(specs_list):
        target = folder / "DICOM" if mixed else folder / f"S{spec.number:03d}"
        names = None
        if mixed and not spec.enhanced:
            # unique opaque names in one folder, series interleaved in name order (37 * m mod a prime)
            names = [f"IM{(10 * k + index) * 37 % 100003:05d}" for k in range(spec.n_slices)]
        write_series(
            target, spec, seed=zlib.crc32(f"{name}/{index}".encode()), uid_seed=f"{name}-{index}", names=names
        )
    return folder


def params(**overrides: object) -> IngestParams:
    """Ingest params for tests: one worker, folder names as keys (the tests' names are made up) unless
    a test asks for another ``patient_key``."""
    return IngestParams(**{"workers": 1, "patient_key": "folder", **overrides})  # type: ignore[arg-type]


def classify(description: str) -> str | None:
    """The ingest rule: params.yaml patterns tried in the order flair, t1c, t2 (case-insensitive)."""
    patterns = yaml.safe_load(PARAMS_YAML.read_text())["ingest"]["sequences"]
    for sequence in ("flair", "t1c", "t2"):
        if any(re.search(pattern, description, re.IGNORECASE) for pattern in patterns[sequence]):
            return sequence
    return None
