"""Patient keys and labels: from RAW/labels.csv when it lists the patient, else the folder-name prefix."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from metastases.errors import UserError
from metastases.ingest.keys import KeyScheme
from metastases.params import CLASSES, IngestParams

LABELS_FILE = "labels.csv"


def patient_key(folder_name: str, scheme: KeyScheme) -> str:
    """The folder name, or a salted HMAC-SHA256 of it (:mod:`metastases.ingest.keys`): stable across runs
    for the same salt, and not reversible to the folder name without the salt."""
    return scheme(folder_name)


def normalise_label(value: str, prefixes: Mapping[str, str]) -> str | None:
    """A class name from a labels.csv value: a class name or a prefix (any case), else None."""
    text = value.strip().lower()
    if text in CLASSES:
        return text
    lowered = {key.lower(): label for key, label in prefixes.items()}
    return lowered.get(text)


def label_from_prefix(folder_name: str, prefixes: Mapping[str, str]) -> str | None:
    """``mts-7`` -> ``metastases`` via the leading letters of the folder name (case-insensitive)."""
    match = re.match(r"[A-Za-z]+", folder_name)
    return normalise_label(match.group(0), prefixes) if match else None


def read_labels_csv(raw_dir: Path, prefixes: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(labels, bad)`` from RAW/labels.csv (empty when absent): patient -> class name, and
    patient -> why its row is unusable (unknown label value, conflicting rows)."""
    path = raw_dir / LABELS_FILE
    if not path.is_file():
        return {}, {}
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path}: cannot be read as CSV ({type(exc).__name__}); expected columns patient,label"
        ) from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    if not {"patient", "label"} <= set(table.columns):
        raise UserError(f"{path}: expected columns patient,label, found {','.join(table.columns)}")
    labels: dict[str, str] = {}
    bad: dict[str, str] = {}
    for patient, value in zip(table["patient"].str.strip(), table["label"], strict=True):
        if not patient:
            continue
        label = normalise_label(value, prefixes)
        if label is None:
            bad[patient] = f"{LABELS_FILE} gives label {value.strip()!r}, not one of {', '.join(CLASSES)}"
        elif labels.get(patient, label) != label:
            bad[patient] = f"{LABELS_FILE} gives this patient conflicting labels"
        else:
            labels[patient] = label
    for patient in bad:
        labels.pop(patient, None)
    return labels, bad


def resolve_label(
    folder_name: str, csv_labels: Mapping[str, str], csv_bad: Mapping[str, str], params: IngestParams
) -> tuple[str, str]:
    """``(label, problem)``: the class name and an empty string, or an empty label and why there is none."""
    if folder_name in csv_bad:
        return "", csv_bad[folder_name]
    if folder_name in csv_labels:
        return csv_labels[folder_name], ""
    label = label_from_prefix(folder_name, params.label_prefixes)
    if label is not None:
        return label, ""
    known = ", ".join(sorted(params.label_prefixes))
    return "", f"no label: not in {LABELS_FILE} and the folder name starts with none of the prefixes {known}"
