"""Ingest one patient folder: read every file, pick one study and one series per sequence, write NIfTI.

Any acquisition plane is accepted (axial, sagittal, coronal, 2D or 3D): the NIfTI affine carries the
geometry, and the arrays stage samples every sequence on the T1+C grid through it.

Runs in a worker process: takes and returns plain picklable data, writes only below its own output folder.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from metastases.ingest.dicomdir import patient_file_list
from metastases.ingest.geometry import (
    Frame,
    GeometryError,
    StackGeometry,
    check_stack,
    frames_of,
    plane_name,
    repeats_per_position,
)
from metastases.ingest.problems import Problem, Skipped, file_label
from metastases.ingest.reading import DicomFile, read_file
from metastases.ingest.series import (
    CHOICE_RULE,
    Series,
    choice_order,
    compile_patterns,
    group_series,
    match_sequence,
    skip_reason,
)
from metastases.ingest.studies import STUDY_RULES_TEXT, Study, choose_study, order_studies
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
    plane: str = ""
    derived: bool = False
    file: str = ""


SEQUENCE_FIELDS: tuple[str, ...] = ("file", "description", "slices", "matrix", "voxel_mm", "plane", "derived")
"""Per-sequence manifest columns, ``<sequence>_<field>``."""

UNMATCHED_REASON = "matches no sequence pattern (ingest.sequences)"
_LISTED_UNMATCHED = 6


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
    study: str = ""
    """The chosen study as ``study 2 of 2 (day +182)`` (no date, no UID); "" when there was none."""
    studies: list[dict[str, object]] = dataclasses.field(default_factory=list)
    """Every study seen (name, sequences found, chosen), listed in the report when there are several."""

    def manifest_row(self) -> dict[str, object]:
        """One manifest.csv row: patient, label, status, reason, study, then per sequence its fields."""
        row: dict[str, object] = {
            "patient": self.key,
            "label": self.label,
            "status": self.status,
            "reason": "; ".join(self.notes),
            "study": self.study,
        }
        for name in SEQUENCES:
            info = self.sequences.get(name)
            row[f"{name}_file"] = info.file if info else ""
            row[f"{name}_description"] = info.description if info else ""
            row[f"{name}_slices"] = info.slices if info else ""
            row[f"{name}_matrix"] = info.matrix if info else ""
            row[f"{name}_voxel_mm"] = info.voxel_mm if info else ""
            row[f"{name}_plane"] = info.plane if info else ""
            row[f"{name}_derived"] = ("yes" if info.derived else "no") if info else ""
        return row


@dataclasses.dataclass
class _Candidate:
    series: Series
    sequence: str
    frames: list[Frame]
    geometry: StackGeometry


def patient_files(folder: Path) -> list[Path]:
    """The files ingest reads below ``folder``: those its DICOMDIR lists, else every file, in path order."""
    return patient_file_list(folder).files


def _skip(result: PatientResult, series: Series, reason: str) -> None:
    result.skipped.append(Skipped(result.key, series.label, reason))


def _candidates(
    series_list: list[Series],
    result: PatientResult,
    params: IngestParams,
    *,
    troubled: set[str],
    skipped_matches: dict[str, str],
) -> list[_Candidate]:
    """Usable image series with the sequence each is; everything else goes to skipped or problems.

    Args:
        series_list: the patient's series.
        result: receives skipped series and problems.
        params: patterns, slice minimum, spacing tolerance, derived rule.
        troubled: receives the sequences of matching series that have a problem.
        skipped_matches: receives, per sequence, why the first matching but skipped series was skipped.
    """
    patterns = compile_patterns(params.sequences)
    found: list[_Candidate] = []
    for series in series_list:
        reason: str | None
        defects = [(file.label, *file.defect) for file in series.files if file.defect is not None]
        if defects:
            label, kind, why = defects[0]
            more = f" (and {len(defects) - 1} more file(s))" if len(defects) > 1 else ""
            reason = f"file {label}: {why}{more}; series not used"
            result.problems.append(Problem(result.key, series.label, reason, kind))
            troubled.add(match_sequence(series, patterns) or "")
            continue
        reason = skip_reason(series, allow_derived=params.allow_derived)
        sequence = match_sequence(series, patterns)
        if reason is None and sequence is None:
            reason = UNMATCHED_REASON
        if reason is not None:
            _skip(result, series, reason)
            if sequence is not None:
                skipped_matches.setdefault(sequence, reason)
            continue
        try:
            frames = [frame for index, file in enumerate(series.files) for frame in frames_of(file, index)]
            repeats = repeats_per_position(frames) if len(frames) >= params.min_slices else 1
            if len(frames) < params.min_slices:
                reason = (
                    f"localizer: {len(frames)} slice(s), fewer than ingest.min_slices={params.min_slices}"
                )
            elif repeats > 1:
                reason = (
                    f"4-D series: {repeats} images at each of {len(frames) // repeats} slice positions "
                    "(diffusion, perfusion or dynamic); only single 3-D volumes are used"
                )
            if reason is not None:
                _skip(result, series, f"{sequence} pattern matched but {reason}")
                skipped_matches.setdefault(str(sequence), reason)
                continue
            geometry = check_stack(frames, params.spacing_tolerance)
        except GeometryError as exc:
            result.problems.append(Problem(result.key, series.label, f"{sequence}: {exc}", exc.kind))
            troubled.add(str(sequence))
            continue
        found.append(_Candidate(series, str(sequence), frames, geometry))
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
            _skip(
                result,
                candidate.series,
                f"{name} candidate not chosen: {chosen[0].series.label} preferred ({CHOICE_RULE})",
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
    if chosen is not None and chosen[0].series.derived:
        result.notes.append(
            f"{name}: DERIVED series used ({chosen[0].series.label}): no usable ORIGINAL series matched"
        )
    return chosen


def _read_all(task: PatientTask, result: PatientResult) -> list[DicomFile]:
    listing = patient_file_list(task.folder)
    for relative in listing.missing:
        result.problems.append(
            Problem(
                task.key,
                "",
                f"file {file_label(Path(relative).parts)}: listed in the DICOMDIR but missing",
                "dicomdir_missing_file",
            )
        )
    if listing.unlisted:
        result.skipped.append(
            Skipped(task.key, "", f"{listing.unlisted} file(s) not listed in the DICOMDIR (not read)")
        )
    if listing.unreadable:
        result.skipped.append(
            Skipped(task.key, "", f"{listing.unreadable} DICOMDIR(s) could not be read: every file was read")
        )
    files = []
    for path in listing.files:
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


def _pick_study(
    candidates: list[_Candidate], series_list: list[Series], result: PatientResult, params: IngestParams
) -> tuple[list[_Candidate], dict[str, str]]:
    """The candidates of the chosen study; the others are skipped. Also, per missing sequence found only
    in another study, where it is (for the missing-sequence message)."""
    studies = order_studies(series_list)
    if not studies:
        return candidates, {}
    found: dict[str, set[str]] = {uid: set() for uid in studies}
    for candidate in candidates:
        found[candidate.series.study_uid].add(candidate.sequence)
    chosen = choose_study(studies, found, params.study)
    result.study = chosen.name
    if len(studies) > 1:
        result.studies = [
            {
                "study": study.name,
                "sequences": [name for name in SEQUENCES if name in found[study.uid]],
                "chosen": study.uid == chosen.uid,
            }
            for study in sorted(studies.values(), key=lambda s: s.order)
        ]
        complete = len(found[chosen.uid]) == len(SEQUENCES)
        why = STUDY_RULES_TEXT[params.study] if complete else "the study with the most sequences"
        result.notes.append(f"{len(studies)} studies: used {chosen.name}, {why} (ingest.study)")
    elsewhere: dict[str, str] = {}
    kept = []
    for candidate in candidates:
        if candidate.series.study_uid == chosen.uid:
            kept.append(candidate)
            continue
        other: Study = studies[candidate.series.study_uid]
        _skip(
            result,
            candidate.series,
            f"{candidate.sequence} series of {other.name}, not the chosen {chosen.name}",
        )
        if candidate.sequence not in found[chosen.uid]:
            elsewhere.setdefault(candidate.sequence, other.name)
    return kept, elsewhere


def _same_frame(
    candidates: list[_Candidate], reference: str, name: str, result: PatientResult
) -> list[_Candidate]:
    """Candidates in the T1+C's frame of reference (or without one); the others are skipped/reported."""
    if not reference:
        return candidates
    same = [c for c in candidates if c.series.frame_of_reference in ("", reference)]
    for candidate in candidates:
        if candidate not in same:
            _skip(
                result,
                candidate.series,
                f"{name} series in another frame of reference than the chosen t1c (FrameOfReferenceUID)",
            )
    if candidates and not same:
        result.problems.append(
            Problem(
                result.key,
                "",
                f"{name}: every candidate is in another frame of reference than the t1c series, so they "
                "cannot be aligned (patient repositioned between series?)",
                "mixed_frame_of_reference",
            )
        )
    return same


def _missing_reason(
    missing: list[str],
    had_candidates: set[str],
    elsewhere: dict[str, str],
    skipped_matches: dict[str, str],
    result: PatientResult,
) -> str:
    """``missing sequence(s): t1c (t1c: no series matched ingest.sequences.t1c); ...`` with what to edit.

    Args:
        missing: the sequences without a volume.
        had_candidates: sequences with matching series that had problems or failed to decode.
        elsewhere: sequence -> the other study that has it.
        skipped_matches: sequence -> why its matching series were skipped (derived forbidden, 4-D, ...).
        result: the patient's result (its unmatched series are listed).
    """
    parts = []
    for name in missing:
        if name in elsewhere:
            parts.append(f"{name} only in {elsewhere[name]} (the three must come from one study)")
        elif name in had_candidates:
            parts.append(f"{name}: no usable series (see the problems listed for it)")
        elif name in skipped_matches:
            parts.append(f"{name}: its series were skipped ({skipped_matches[name]})")
        else:
            parts.append(f"{name}: no series matched ingest.sequences.{name}")
    reason = f"missing sequence(s): {', '.join(missing)} ({'; '.join(parts)})"
    unmatched = [s.series for s in result.skipped if s.reason == UNMATCHED_REASON]
    unexplained = [
        n for n in missing if n not in had_candidates and n not in elsewhere and n not in skipped_matches
    ]
    if unmatched and unexplained:
        shown = ", ".join(unmatched[:_LISTED_UNMATCHED])
        more = f" and {len(unmatched) - _LISTED_UNMATCHED} more" if len(unmatched) > _LISTED_UNMATCHED else ""
        reason += (
            f"; series matching no pattern: {shown}{more}: "
            "if one is the sequence, add a pattern to ingest.sequences"
        )
    return reason


def _ingest(task: PatientTask, out_dir: Path, result: PatientResult) -> None:
    files = _read_all(task, result)
    if result.files_read == 0 and not result.problems:
        reason = "no files: the patient folder is empty"
        result.problems.append(Problem(task.key, "", reason, "no_files"))
        result.notes.insert(0, reason)
        result.status = "excluded"
        return
    series_list = group_series(files)
    result.series_read = len(series_list)
    troubled: set[str] = set()
    skipped_matches: dict[str, str] = {}
    found = _candidates(series_list, result, task.params, troubled=troubled, skipped_matches=skipped_matches)
    candidates, elsewhere = _pick_study(found, series_list, result, task.params)
    by_sequence = {name: [c for c in candidates if c.sequence == name] for name in SEQUENCES}
    had_candidates = troubled | {name for name, found in by_sequence.items() if found}
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    reference = ""
    # the T1+C first: its frame of reference is the one the other sequences must share
    for name in ("t1c", *(s for s in SEQUENCES if s != "t1c")):
        options = (
            by_sequence[name] if name == "t1c" else _same_frame(by_sequence[name], reference, name, result)
        )
        chosen = _choose_and_stack(name, options, result)
        if chosen is None:
            continue
        candidate, volume = chosen
        if name == "t1c":
            reference = candidate.series.frame_of_reference
        geometry = candidate.geometry
        orientation = candidate.frames[0].orientation
        result.sequences[name] = SequenceInfo(
            description=candidate.series.description,
            slices=len(geometry.order),
            matrix=f"{geometry.columns}x{geometry.rows}",
            voxel_mm="x".join(f"{v:.2f}" for v in geometry.voxel_mm),
            plane=plane_name(orientation) if orientation is not None else "",
            derived=candidate.series.derived,
        )
        volumes[name] = (volume, geometry.affine)
    missing = [name for name in SEQUENCES if name not in volumes]
    if missing:
        reason = _missing_reason(missing, had_candidates, elsewhere, skipped_matches, result)
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
    for name in SEQUENCES:
        volume, affine = volumes[name]
        nib.save(nifti_image(volume, affine), target / f"{name}.nii.gz")
        result.sequences[name] = dataclasses.replace(result.sequences[name], file=f"{task.key}/{name}.nii.gz")
