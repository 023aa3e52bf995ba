"""How a PACS export looks: vendor series descriptions, fake identities, folder layouts, file names.

Everything here is drawn from the patient's own random generator so the cohort is reproducible.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import numpy as np

# Descriptions as the three big vendors write them. Ingest recognises sequences by regular expressions
# (params.yaml ingest.sequences, tried in the order flair, t1c, t2), so "AX T2 FLAIR" and
# "t2_tirm_tra_dark-fluid" must stay FLAIRs; tests/test_demo_cohort.py checks every string here.
VENDORS: dict[str, dict[str, tuple[str, ...]]] = {
    "GE MEDICAL SYSTEMS": {
        "flair": ("Ax T2 FLAIR", "AX FLAIR", "Ax FLAIR"),
        "t2": ("AX T2 FSE", "Ax T2 PROPELLER", "AX T2"),
        "t1c": ("Ax T1 +C", "AX T1 SE +C", "Ax T1 POST"),
        "localizer": ("3-plane loc", "3 Plane Loc"),
    },
    "SIEMENS": {
        "flair": ("t2_tirm_tra_dark-fluid", "t2_flair_tra", "FLAIR_TRA"),
        "t2": ("t2_tse_tra", "t2_tse_tra_5mm"),
        "t1c": ("t1_se_tra_post", "T1_SE_TRA_GD", "t1_se_tra_KM_post"),
        "localizer": ("localizer", "AAHead_Scout"),
    },
    "Philips Medical Systems": {
        "flair": ("T2W_FLAIR", "FLAIR_TRA", "AX FLAIR"),
        "t2": ("T2W_TSE", "T2_TSE_TRA"),
        "t1c": ("T1W_SE_CE", "T1W_SE_TRA_GD", "T1 AX POST GAD"),
        "localizer": ("Survey", "SURVEY_MST"),
    },
}
GE_PROTOCOL = "BRAIN MET W/WO"
"""GE writes a study-level ProtocolName that names no sequence, so the description must carry it."""

LAYOUTS: tuple[str, ...] = ("series_folders", "flat", "nested")
"""``series_folders``: ``<patient>/<series folder>/IM-0003-0017.dcm``; ``flat``: every file of every
series in ``<patient>/`` as ``IM00017`` (no extension); ``nested``:
``<patient>/DICOM/ST00001/SE00003/IM00017``."""

_SURNAMES = ("Quillfeather", "Brambleton", "Okonkwo-Vale", "Zapatero", "Lindqvarn", "Marchetti", "Pevensie")
_GIVEN = ("Ada", "Boris", "Chiamaka", "Dmitri", "Elin", "Farouk", "Greta", "Hiroshi")
_CITIES = ("Northbridge", "Lakeside", "Oldham Vale", "Port Ellery", "Kestrel Bay")


def fake_identity(rng: np.random.Generator) -> dict[str, str]:
    """Distinctive, obviously fake patient and visit tags (the ingest must never copy them out)."""
    surname, given = rng.choice(_SURNAMES), rng.choice(_GIVEN)
    birth = np.datetime64("1940-01-01") + int(rng.integers(0, 50 * 365))
    return {
        "PatientName": f"FAKE^{surname}^{given}",
        "PatientID": f"FKID{int(rng.integers(10**7, 10**8))}",
        "PatientBirthDate": str(birth).replace("-", ""),
        "PatientSex": str(rng.choice(["F", "M"])),
        "InstitutionName": f"Fake General Hospital of {rng.choice(_CITIES)}",
        "AccessionNumber": f"FKACC{int(rng.integers(10**6, 10**7))}",
        "ReferringPhysicianName": f"FAKEDR^{rng.choice(_SURNAMES)}",
    }


def study_date(rng: np.random.Generator) -> str:
    return str(np.datetime64("2015-01-01") + int(rng.integers(0, 9 * 365))).replace("-", "")


@dataclasses.dataclass(frozen=True)
class SeriesNaming:
    """What one series is called: ``sequence`` is flair/t2/t1c/localizer."""

    sequence: str
    description: str
    protocol: str
    series_number: int


def series_namings(
    rng: np.random.Generator,
    vendor: str,
    localizer: bool,
    repeat_flair: bool,
    *,
    vendors: Mapping[str, Mapping[str, tuple[str, ...]]] = VENDORS,
) -> list[SeriesNaming]:
    """Acquisition order of one study: localizer first, FLAIR and T2 in either order, T1+C last
    (after contrast). A repeated FLAIR (motion) follows the first under the same description.

    Args:
        rng: the patient's generator.
        vendor: a key of ``vendors``.
        localizer: whether the study starts with a localizer.
        repeat_flair: whether the FLAIR is acquired twice.
        vendors: manufacturer -> sequence -> descriptions (another site's: :mod:`.site`).
    """
    styles = vendors[vendor]
    order = ["flair", "t2"] if rng.random() < 0.6 else ["t2", "flair"]
    if repeat_flair:
        order.insert(order.index("flair") + 1, "flair")
    order = (["localizer"] if localizer else []) + [*order, "t1c"]
    chosen = {sequence: str(rng.choice(options)) for sequence, options in styles.items()}
    step = 100 if vendor.startswith("Philips") else 1  # Philips numbers series 101, 201, ...
    start = int(rng.integers(1, 4))
    namings = []
    for k, sequence in enumerate(order):
        description = chosen[sequence]
        protocol = GE_PROTOCOL if vendor.startswith("GE") else description
        namings.append(
            SeriesNaming(sequence, description, protocol, (start + k) * step + (1 if step > 1 else 0))
        )
    return namings


def series_folder_name(naming: SeriesNaming, style: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9]+", "_", naming.description).strip("_")
    return (
        f"{naming.series_number:03d}_{safe}",
        f"SE{naming.series_number}",
        safe + f"_{naming.series_number}",
    )[style]


def shuffled_numbers(rng: np.random.Generator, count: int, start: int = 1) -> list[int]:
    """``count`` distinct numbers from ``start`` in an order that is never the identity (for count > 1)."""
    numbers = np.arange(start, start + count)
    order = rng.permutation(count)
    if count > 1 and np.array_equal(order, np.arange(count)):
        order = order[::-1]
    return [int(n) for n in numbers[order]]
