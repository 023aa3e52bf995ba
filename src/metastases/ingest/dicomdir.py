"""Which files of a patient folder to read: those a DICOMDIR lists when the folder has one, else every file.

A CD/DVD export puts a DICOMDIR (a Media Storage Directory) at its root, next to viewer software whose
hundreds of files are not DICOM. When a readable DICOMDIR is present, the files it references are read
and the others only counted; paths are matched case-insensitively (ISO 9660 media are upper case, copies
often lower case). An unreadable DICOMDIR is ignored and every file is read.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pydicom

log = logging.getLogger(__name__)

DICOMDIR_NAME = "DICOMDIR"


@dataclasses.dataclass(frozen=True)
class FileList:
    """The files to read; ``missing``: referenced by a DICOMDIR but absent (paths relative to the
    folder); ``unlisted``: files a DICOMDIR does not reference (not read); ``dicomdirs``: how many
    DICOMDIRs were used, ``unreadable`` how many could not be parsed (then every file is read)."""

    files: list[Path]
    missing: list[str] = dataclasses.field(default_factory=list)
    unlisted: int = 0
    dicomdirs: int = 0
    unreadable: int = 0


def _referenced(dicomdir: Path) -> list[tuple[str, ...]] | None:
    """ReferencedFileID of every directory record, as path components relative to the DICOMDIR's folder."""
    try:
        ds = pydicom.dcmread(dicomdir, force=True)
        records = ds.DirectoryRecordSequence
        found = []
        for record in records:
            value = record.get("ReferencedFileID")
            if value is None:
                continue
            parts = (value,) if isinstance(value, str) else tuple(str(v) for v in value)
            found.append(tuple(part.strip() for part in parts if part.strip()))
    except Exception:  # a damaged or foreign file named DICOMDIR: walk the folder instead
        return None
    return found


def patient_file_list(folder: Path) -> FileList:
    """Every regular file below ``folder`` in sorted path order, or only those its DICOMDIR(s) list."""
    every = sorted(path for path in folder.rglob("*") if path.is_file())
    dicomdirs = [path for path in every if path.name.upper() == DICOMDIR_NAME]
    if not dicomdirs:
        return FileList(every)
    by_lower = {str(path.relative_to(folder)).lower(): path for path in every}
    chosen: set[Path] = set()
    missing: list[str] = []
    used = unreadable = 0
    for dicomdir in dicomdirs:
        references = _referenced(dicomdir)
        if references is None:
            unreadable += 1
            continue
        used += 1
        base = dicomdir.parent.relative_to(folder)
        for parts in references:
            relative = str(base.joinpath(*parts))
            path = by_lower.get(relative.lower())
            if path is None:
                missing.append(relative)
            else:
                chosen.add(path)
    if used == 0:
        return FileList([p for p in every if p not in dicomdirs], unreadable=unreadable)
    files = [path for path in every if path in chosen]
    unlisted = len(every) - len(files) - len(dicomdirs)
    return FileList(files, sorted(set(missing)), unlisted, used, unreadable)
