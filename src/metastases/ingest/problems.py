"""What ingest found wrong or left out: problems (bad input) and skipped series (not wanted), both plain data.

Every entry names the patient by its key and a series as ``series <SeriesNumber> "<SeriesDescription>"``,
never by UID, so the report can be shared without identifying anyone.
"""

from __future__ import annotations

import dataclasses
import re

PROBLEM_KINDS: tuple[str, ...] = (
    "no_files",
    "not_dicom",
    "dicomdir_missing_file",
    "truncated",
    "unknown_transfer_syntax",
    "undecodable",
    "inconsistent",
    "duplicate_slices",
    "uneven_spacing",
    "missing_sequence",
    "mixed_frame_of_reference",
    "no_label",
    "label_without_patient",
    "unexpected_error",
)
"""Every kind of bad input ingest reports; metrics/ingest.json counts each (zero included)."""

# A path component that looks like a DICOM UID (exports often name files after the SOPInstanceUID):
# masked in messages because UIDs can be traced back to the hospital.
_UID_LIKE = re.compile(r"^\d+(\.\d+){3,}(\.[A-Za-z0-9]+)?$")


@dataclasses.dataclass(frozen=True)
class Problem:
    """Bad input the user should look at; ``series`` is empty for file- or patient-level problems."""

    patient: str
    series: str
    reason: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}")


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A series (or object) left out on purpose: localizer, derived, non-image, unmatched, not chosen."""

    patient: str
    series: str
    reason: str


def series_label(number: object, description: str) -> str:
    """How every message names a series: ``series 5 "AX FLAIR"``."""
    shown = "?" if number is None or number == "" else str(number)
    return f'series {shown} "{description}"'


def file_label(relative_parts: tuple[str, ...]) -> str:
    """A file's path below its patient folder, with UID-like components masked as ``<uid>``."""
    return "/".join("<uid>" if _UID_LIKE.match(part) else part for part in relative_parts)
