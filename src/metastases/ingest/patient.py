"""Ingest one patient folder: read every file, pick one series per sequence, write its NIfTI volumes.

Runs in a worker process: takes and returns plain picklable data, writes only below its own output folder.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from metastases.ingest.geometry import Frame, GeometryError, StackGeometry, check_stack, frames_of, plane_name
from metastases.ingest.reading import DicomFile, read_file
from metastases.ingest.report import Problem, Skipped
from metastases.ingest.series import (
    CHOICE_RULE,
    Series,
    choice_order,
    compile_patterns,
    group_series,
    match_sequence,
    skip_reason,
)
from metastases.ingest.volume import DecodeError, nifti_image, stack_volume
from metastases.params import SEQUENCES, IngestParams

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PatientTask:
    """One patient to ingest: its folder, key, label ("" when none, then ``label_problem`` says why)."""

    folder: Path
    key: str
    label: str
    label_problem: str
    params: IngestParams


@dataclasses.dataclass(frozen=True)
class SequenceInfo:
    """The chosen series of one sequence, as the manifest shows it."""

    description: str
    slices: int
    matrix: str
    voxel_mm: str
    file: str = ""


@dataclasses.dataclass
class PatientResult:
    key: str
    label: str
    status: str = "ok"
    notes: list[str] = dataclasses.field(default_factory=list)
    sequences: dict[str, SequenceInfo] = dataclasses.field(default_factory=dict)
    problems: list[Problem] = dataclasses.field(default_factory=list)
    skipped: list[Skipped] = dataclasses.field(default_factory=list)
    files_read: int = 0
    series_read: int = 0

    def manifest_row(self) -> dict[str, object]:
        """One manifest.csv row: patient, label, status, reason, then per sequence file/description/..."""
        row: dict[str, object] = {
            "patient": self.key,
            "label": self.label,
            "status": self.status,
            "reason": "; ".join(self.notes),
        }
        for name in SEQUENCES:
            info = self.sequences.get(name)
            row[f"{name}_file"] = info.file if info else ""
            row[f"{name}_description"] = info.description if info else ""
            row[f"{name}_slices"] = info.slices if info else ""
            row[f"{name}_matrix"] = info.matrix if info else ""
            row[f"{name}_voxel_mm"] = info.voxel_mm if info else ""
        return row


@dataclasses.dataclass
class _Candidate:
    series: Series
    frames: list[Frame]
    geometry: StackGeometry


def patient_files(folder: Path) -> list[Path]:
    """Every regular file below ``folder`` at any depth, in sorted path order (names say nothing)."""
    return sorted(path for path in folder.rglob("*") if path.is_file())


def _candidates(
    series_list: list[Series], result: PatientResult, params: IngestParams
) -> dict[str, list[_Candidate]]:
    """Usable axial image series per sequence; everything else goes to skipped or problems."""
    patterns = compile_patterns(params.sequences)
    found: dict[str, list[_Candidate]] = {name: [] for name in SEQUENCES}
    for series in series_list:
        reason: str | None
        defects = [(file.label, *file.defect) for file in series.files if file.defect is not None]
        if defects:
            label, kind, why = defects[0]
            more = f" (and {len(defects) - 1} more file(s))" if len(defects) > 1 else ""
            reason = f"file {label}: {why}{more}; series not used"
            result.problems.append(Problem(result.key, series.label, reason, kind))
            continue
        reason = skip_reason(series)
        sequence = None if reason else match_sequence(series, patterns)
        if reason is None and sequence is None:
            reason = "matches no sequence pattern (ingest.sequences)"
        if reason is not None:
            result.skipped.append(Skipped(result.key, series.label, reason))
            continue
        try:
            frames = [frame for index, file in enumerate(series.files) for frame in frames_of(file, index)]
            if len(frames) < params.min_slices:
                reason = (
                    f"localizer: {len(frames)} slice(s), fewer than ingest.min_slices={params.min_slices}"
                )
            elif frames[0].orientation is not None and plane_name(frames[0].orientation) != "axial":
                reason = f"{plane_name(frames[0].orientation)} series (only axial series are used)"
            if reason is not None:
                result.skipped.append(
                    Skipped(result.key, series.label, f"{sequence} pattern matched but {reason}")
                )
                continue
            geometry = check_stack(frames, params.spacing_tolerance)
        except GeometryError as exc:
            result.problems.append(Problem(result.key, series.label, f"{sequence}: {exc}", exc.kind))
            continue
        found[str(sequence)].append(_Candidate(series, frames, geometry))
    return found


def _choose_and_stack(
    name: str, candidates: list[_Candidate], result: PatientResult
) -> tuple[_Candidate, np.ndarray] | None:
    """Decode candidates in preference order; the first that decodes wins, the others are listed."""
    order = choice_order([(c.series, len(c.frames)) for c in candidates])
    chosen: tuple[_Candidate, np.ndarray] | None = None
    for index in order:
        candidate = candidates[index]
        if chosen is not None:
            result.skipped.append(
                Skipped(
                    result.key,
                    candidate.series.label,
                    f"{name} candidate not chosen: {chosen[0].series.label} preferred ({CHOICE_RULE})",
                )
            )
            continue
        try:
            volume = stack_volume(candidate.series.files, candidate.frames, candidate.geometry)
        except DecodeError as exc:
            result.problems.append(Problem(result.key, candidate.series.label, f"{name}: {exc}", exc.kind))
            continue
        chosen = (candidate, volume)
    if chosen is not None and len(candidates) > 1:
        result.notes.append(f"{name}: chose {chosen[0].series.label} of {len(candidates)} candidates")
    return chosen


def _read_all(task: PatientTask, result: PatientResult) -> list[DicomFile]:
    files = []
    for path in patient_files(task.folder):
        result.files_read += 1
        item = read_file(path, task.folder, task.key)
        if isinstance(item, Problem):
            result.problems.append(item)
        elif not item.series_uid:
            result.skipped.append(
                Skipped(task.key, "", f"file {item.label}: {item.sop_class} without a series")
            )
        else:
            files.append(item)
    return files


def ingest_patient(task: PatientTask, out_dir: Path) -> PatientResult:
    """Read ``task.folder`` and, when all sequences and a label are there, write
    ``out_dir/<key>/<sequence>.nii.gz``. Every problem is in the result; nothing raises for bad data."""
    result = PatientResult(key=task.key, label=task.label)
    try:
        _ingest(task, out_dir, result)
    except Exception as exc:  # a bug or an input nobody foresaw must not stop the other patients
        log.debug("unexpected error for %s", task.key, exc_info=True)
        result.status = "excluded"
        result.notes.append(f"unexpected {type(exc).__name__} while reading this patient")
        result.problems.append(
            Problem(
                task.key,
                "",
                f"unexpected {type(exc).__name__} while reading this patient",
                "unexpected_error",
            )
        )
    return result


def _ingest(task: PatientTask, out_dir: Path, result: PatientResult) -> None:
    files = _read_all(task, result)
    series_list = group_series(files)
    result.series_read = len(series_list)
    candidates = _candidates(series_list, result, task.params)
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in SEQUENCES:
        chosen = _choose_and_stack(name, candidates[name], result)
        if chosen is None:
            continue
        candidate, volume = chosen
        geometry = candidate.geometry
        result.sequences[name] = SequenceInfo(
            description=candidate.series.description,
            slices=len(geometry.order),
            matrix=f"{geometry.columns}x{geometry.rows}",
            voxel_mm="x".join(f"{v:.2f}" for v in geometry.voxel_mm),
        )
        volumes[name] = (volume, geometry.affine)
    missing = [name for name in SEQUENCES if name not in volumes]
    if missing:
        reason = f"missing sequence(s): {', '.join(missing)}"
        result.problems.append(Problem(task.key, "", reason, "missing_sequence"))
        result.notes.insert(0, reason)
    if not task.label:
        result.problems.append(Problem(task.key, "", task.label_problem, "no_label"))
        result.notes.insert(0, task.label_problem)
    if missing or not task.label:
        result.status = "excluded"
        return
    target = out_dir / task.key
    target.mkdir(parents=True, exist_ok=True)
    for name, (volume, affine) in volumes.items():
        nib.save(nifti_image(volume, affine), target / f"{name}.nii.gz")
        result.sequences[name] = dataclasses.replace(result.sequences[name], file=f"{task.key}/{name}.nii.gz")
