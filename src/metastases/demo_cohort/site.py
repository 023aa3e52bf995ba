"""Site profiles: the hospital a synthetic cohort comes from.

Site ``a`` is the demo cohort as it has always been built (three vendors, 1.5 T-like contrast, varied
protocols); its random draws and bytes never change. Site ``b`` is a second hospital a model trained on
site ``a`` has never seen: one other vendor and its naming, 3 T-like contrast, more noise, a stronger
coil bias, thin slices on a coarser matrix, heads tilted chin-up, brighter scalp fat and enhancing
vessels near the cortex in every patient (enhancing mimics, recorded in ``lesions.csv`` as kind
``mimic``, enhancing ``yes``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from metastases.demo_cohort.export import VENDORS
from metastases.errors import ParamsError

# Canon (formerly Toshiba) descriptions, none of them used at site a. Ingest recognises them with the
# default params.yaml ingest.sequences; tests/test_demo_site.py checks every string.
SITE_B_VENDORS: dict[str, dict[str, tuple[str, ...]]] = {
    "CANON_MEC": {
        "flair": ("FLAIR AX", "AX FLAIR 3mm", "FLAIR_AX_3.0"),
        "t2": ("T2 FSE AX", "T2W_FSE AX", "AX T2 FSE 3mm"),
        "t1c": ("T1 SE AX +C", "T1W SE AX +C", "AX T1 SE POST"),
        "localizer": ("Locator", "3P Locator"),
    },
}

# 3 T contrast relative to site a's SIGNALS (multipliers, 1 where absent): stronger grey/white contrast
# and enhancement on T1+C, more CSF left over on FLAIR, brighter fat (scalp) on every sequence.
SITE_B_SIGNAL_FACTORS: dict[str, dict[str, float]] = {
    "flair": {"csf": 1.8, "gm": 1.06, "wm": 0.97, "fat": 1.35, "skin": 1.1},
    "t2": {"csf": 0.92, "gm": 1.05, "wm": 0.93, "fat": 1.35},
    "t1c": {"csf": 0.8, "gm": 0.9, "wm": 1.06, "dura": 1.15, "marrow": 1.1, "fat": 1.35, "enhancing": 1.12},
}

# Enhancing vessels: bright on T1+C like a metastasis's rim, flow voids (dark) on FLAIR and T2.
SITE_B_VESSEL_SIGNALS: dict[str, float] = {"flair": 0.12, "t2": 0.12, "t1c": 1.6}


@dataclasses.dataclass(frozen=True)
class AxialProtocol:
    """One fixed axial protocol for every FLAIR/T2/T1+C stack of a site (site a varies its own instead).

    ``matrix`` pixels square (times the size scale) over a field of view drawn from ``fov_mm``;
    ``thickness_mm`` slices without gap, their count drawn from ``slices`` (low, high exclusive).
    """

    matrix: int
    fov_mm: tuple[float, float]
    thickness_mm: float
    slices: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Site:
    """How one hospital's studies look. Site a's values reproduce the original generator exactly."""

    name: str
    """``a`` or ``b``: the ``--site`` option."""
    vendors: Mapping[str, Mapping[str, tuple[str, ...]]]
    """Manufacturer -> sequence -> series descriptions; one vendor per patient, drawn uniformly."""
    first_folder: int
    """Number of the first folder of each class (``mts-<n>``, ``norma-<n>``): sites never share a name."""
    stream: int | None
    """None: patient seeds as ever; else an extra entropy word, so that a patient's draws differ from
    site a's patient of the same seed and index."""
    uid_prefix: str
    """Start of every patient's UID seed; the cohort seed and patient index follow."""
    protocol: AxialProtocol | None
    """The site's axial stacks; None: site a's varied ones (4-6 mm, matrix 256 or 512, 220-240 mm)."""
    noise: tuple[float, float]
    """Range of the Rician noise's sigma per series (relative to white matter on T1+C about 1)."""
    bias_strength: float
    """Multiplies the coil bias field's log-gain coefficients (1: gains about 0.8-1.2 across a head)."""
    head_tilt: tuple[tuple[float, float, float], tuple[float, float, float]] | None
    """Range (low, high) of an extra head rotation about x (nod, + chin up), y (roll), z (yaw) in
    degrees, applied after the random head; None: none."""
    signal_factors: Mapping[str, Mapping[str, float]]
    """Sequence -> tissue -> multiplier of the patient's signal table (field strength, sequence)."""
    vessel_signals: Mapping[str, float]
    """Sequence -> signal of an enhancing vessel (only read when ``vessels`` allows any)."""
    vessels: tuple[int, int]
    """Number of enhancing vessels per patient, drawn from (low, high exclusive); (0, 0): none."""
    institution: str | None
    """InstitutionName of every study; None: site a's fake hospital names, drawn per patient."""

    def uid_seed(self, seed: int, index: int) -> str:
        """The seed of every DICOM UID of one patient."""
        return f"{self.uid_prefix}{seed}:{index}"


SITES: dict[str, Site] = {
    "a": Site(
        name="a",
        vendors=VENDORS,
        first_folder=1,
        stream=None,
        uid_prefix="metastases-demo-cohort:",
        protocol=None,
        noise=(0.015, 0.035),
        bias_strength=1.0,
        head_tilt=None,
        signal_factors={},
        vessel_signals={},
        vessels=(0, 0),
        institution=None,
    ),
    "b": Site(
        name="b",
        vendors=SITE_B_VENDORS,
        first_folder=1001,
        stream=0x5173B,
        uid_prefix="metastases-demo-cohort:site-b:",
        protocol=AxialProtocol(matrix=192, fov_mm=(240.0, 250.0), thickness_mm=3.0, slices=(44, 51)),
        noise=(0.03, 0.06),
        bias_strength=2.0,
        head_tilt=((10.0, -3.0, -2.0), (18.0, 3.0, 2.0)),
        signal_factors=SITE_B_SIGNAL_FACTORS,
        vessel_signals=SITE_B_VESSEL_SIGNALS,
        vessels=(2, 5),
        institution="Fake University Hospital B",
    ),
}


def site_profile(name: str) -> Site:
    """The profile of site ``name``; an unknown name is a :class:`ParamsError`."""
    if name not in SITES:
        raise ParamsError(f"--site must be one of {', '.join(SITES)}, got {name!r}")
    return SITES[name]
