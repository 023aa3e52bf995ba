"""Where the lesions really are: ``lesions.csv`` beside ``labels.csv``, written by the demo cohort generator.

One row per lesion: ``patient`` (folder name), ``lesion`` (1, 2, ... within its kind), ``kind``
(``metastasis`` or ``mimic``: a non-enhancing white-matter spot that is not a metastasis), its centre
``x_mm, y_mm, z_mm`` in DICOM patient coordinates (LPS: x to the patient's left, y posterior, z
superior; millimetres, the frame of ImagePositionPatient), ``diameter_mm`` and ``enhancing`` (yes/no).

Nothing that trains or builds the data reads this file (ingest skips it like ``labels.csv``); only the
evaluation of where a model looked does, when it exists. A user's own export has none.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from metastases.errors import UserError

log = logging.getLogger(__name__)

LESIONS_FILE = "lesions.csv"
COLUMNS: tuple[str, ...] = ("patient", "lesion", "kind", "x_mm", "y_mm", "z_mm", "diameter_mm", "enhancing")
KINDS: tuple[str, ...] = ("metastasis", "mimic")


def read_lesions(raw_dir: Path) -> pd.DataFrame | None:
    """``raw_dir/lesions.csv`` checked, or None (one log line) when the cohort has no lesion truth."""
    path = raw_dir / LESIONS_FILE
    if not path.is_file():
        log.info("no %s in %s: localisation is not scored (only generated cohorts know where lesions are)",
                 LESIONS_FILE, raw_dir)  # fmt: skip
        return None
    try:
        table = pd.read_csv(path, dtype={"patient": str, "kind": str, "enhancing": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV ({type(exc).__name__})") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    bad_kind = sorted(set(table["kind"]) - set(KINDS))
    if bad_kind:
        raise UserError(
            f"{path}: kind must be one of {', '.join(KINDS)}, got {', '.join(map(str, bad_kind))}"
        )
    numeric = ["x_mm", "y_mm", "z_mm", "diameter_mm"]
    values = table[numeric].apply(pd.to_numeric, errors="coerce")
    if values.isna().any().any() or (values["diameter_mm"] <= 0).any():
        raise UserError(f"{path}: x_mm, y_mm, z_mm must be numbers and diameter_mm positive in every row")
    return table.assign(**{c: values[c].astype(float) for c in numeric})
