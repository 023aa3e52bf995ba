"""Ingest: a raw DICOM tree (one folder per patient) -> one NIfTI volume per patient and sequence.

Modules, in the order data flows: :mod:`reading` (one file), :mod:`series` (grouping, sequence
recognition, skipping), :mod:`geometry` (slice order, checks, RAS affine), :mod:`volume` (pixels,
rescale, NIfTI), :mod:`patient` (one patient folder), :mod:`labels` (keys and labels),
:mod:`cohort` (all patients in parallel, manifest and report), :mod:`report` (problem records).
"""

from metastases.ingest.cohort import (
    MANIFEST_COLUMNS,
    CohortResult,
    has_patient_folders,
    ingest_cohort,
    write_empty_cohort,
)

__all__ = ["MANIFEST_COLUMNS", "CohortResult", "has_patient_folders", "ingest_cohort", "write_empty_cohort"]
