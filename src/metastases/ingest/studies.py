"""Several studies in one patient folder (baseline and follow-up): name them without dates, pick one.

The three sequences of a patient must come from one study (StudyInstanceUID), so that they were acquired
in one visit and, where FrameOfReferenceUID is present, share one patient coordinate system. Studies are
ordered by StudyDate/StudyTime (undated ones after the dated, in the order their series are found) and
named ``study 2 of 3 (day +182)``: the order and the offset in days from the patient's first dated study,
never the date or a UID.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from metastases.ingest.series import Series

STUDY_RULES_TEXT = {
    "latest": "the most recent study that has all three sequences",
    "earliest": "the earliest study that has all three sequences",
}
"""What ``ingest.study`` means, as the report states it."""


@dataclasses.dataclass(frozen=True)
class Study:
    """One study of a patient folder; ``uid`` stays in memory (it identifies), ``name`` is written out."""

    uid: str
    order: int
    count: int
    day_offset: int | None

    @property
    def name(self) -> str:
        when = (
            "no date"
            if self.day_offset is None
            else f"day {self.day_offset:+d}"
            if self.day_offset
            else "day 0"
        )
        return f"study {self.order} of {self.count} ({when})"


def _date(text: str) -> dt.date | None:
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except (ValueError, IndexError):
        return None


def order_studies(series_list: Iterable[Series]) -> dict[str, Study]:
    """Every study of the folder's series, in time order (key: StudyInstanceUID, "" when absent)."""
    first_seen: dict[str, int] = {}
    when: dict[str, str] = {}
    for index, series in enumerate(series_list):
        uid = series.study_uid
        first_seen.setdefault(uid, index)
        stamps = [file.study_datetime for file in series.files if file.study_datetime]
        if stamps and (uid not in when or min(stamps) < when[uid]):
            when[uid] = min(stamps)
    ordered = sorted(first_seen, key=lambda uid: (uid not in when, when.get(uid, ""), first_seen[uid]))
    dates = {uid: _date(when[uid]) for uid in when}
    known = [d for d in dates.values() if d is not None]
    first = min(known) if known else None
    studies = {}
    for order, uid in enumerate(ordered, start=1):
        day = dates.get(uid)
        offset = (day - first).days if day is not None and first is not None else None
        studies[uid] = Study(uid, order, len(ordered), offset)
    return studies


def choose_study(studies: Mapping[str, Study], sequences_found: Mapping[str, set[str]], rule: str) -> Study:
    """The study the patient contributes: by ``rule`` (latest | earliest) among those with every sequence;
    when none has all, the one with the most sequences (then by the rule), whose gaps are then reported."""
    wanted = max(len(found) for found in sequences_found.values()) if sequences_found else 0
    pool = [study for study in studies.values() if len(sequences_found.get(study.uid, set())) == wanted]
    pool.sort(key=lambda study: study.order)
    return pool[-1] if rule == "latest" else pool[0]


def study_uids(raw_dir: Path) -> set[str]:
    """Every StudyInstanceUID under ``raw_dir`` (files that are not DICOM are passed over): to tell
    whether two cohorts share a study. The UIDs are compared, never written anywhere."""
    uids: set[str] = set()
    if not raw_dir.is_dir():
        return uids
    for path in sorted(p for p in raw_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError):
            continue
        uid = str(ds.get("StudyInstanceUID", "") or "")
        if uid:
            uids.add(uid)
    return uids
