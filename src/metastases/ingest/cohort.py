"""Ingest a whole raw cohort: patients in parallel, then manifest.csv, report.json and the metrics.

The output folder is built in a temporary sibling and swapped in at the end, so it always reflects
exactly the current raw folder (a patient removed from raw disappears) and is never half-written.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from metastases.atomic import write_csv, write_json
from metastases.errors import UserError
from metastases.ingest.keys import DEMO_MARKER, KeyScheme, key_scheme
from metastases.ingest.labels import LABELS_FILE, patient_key, read_labels_csv, resolve_label
from metastases.ingest.patient import (
    SEQUENCE_FIELDS,
    UNMATCHED_REASON,
    PatientResult,
    PatientTask,
    ingest_patient,
)
from metastases.ingest.problems import PROBLEM_KINDS, Problem, Skipped
from metastases.ingest.series import CHOICE_RULE, MATCH_ORDER
from metastases.ingest.studies import STUDY_RULES_TEXT
from metastases.lesion_truth import LESIONS_FILE
from metastases.params import SEQUENCES, IngestParams, cpu_workers

log = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = (
    "patient",
    "label",
    "status",
    "reason",
    "study",
    *(f"{s}_{field}" for s in SEQUENCES for field in SEQUENCE_FIELDS),
)
"""manifest.csv columns: one row per patient folder found, ingested or excluded. ``study`` names the
study used (``study 2 of 2 (day +182)``), ``<sequence>_plane`` the acquisition plane and
``<sequence>_derived`` whether a DERIVED series (a reformat) was used."""

DEMO_HINT = (
    "build the demo cohort with `python -m metastases.demo_cohort {raw} --from-params params.yaml` "
    "(or `make run`)"
)
_LOGGED_PROBLEMS = 20


@dataclasses.dataclass(frozen=True)
class CohortResult:
    manifest: pd.DataFrame
    report: dict[str, object]
    metrics: dict[str, int]


def find_patients(raw_dir: Path) -> list[Path]:
    """Patient folders: direct, non-hidden sub-folders of ``raw_dir``, by name. Missing/empty -> UserError."""
    if not raw_dir.is_dir():
        raise UserError(
            f"raw DICOM folder {raw_dir} not found: {DEMO_HINT.format(raw=raw_dir)}, "
            "or pass --raw-dir with one sub-folder per patient"
        )
    patients = sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not patients:
        raise UserError(
            f"raw DICOM folder {raw_dir} has no patient sub-folders: {DEMO_HINT.format(raw=raw_dir)}, "
            "or copy your export there (one sub-folder per patient)"
        )
    return patients


@contextmanager
def _staged_dir(out_dir: Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``out_dir`` that replaces it on success and vanishes on error."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=out_dir.parent))
    try:
        yield staging
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
        os.replace(staging, out_dir)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _run_patients(tasks: list[PatientTask], staging: Path, workers: int) -> list[PatientResult]:
    """Results in task order whatever order the workers finish in."""
    results: list[PatientResult | None] = [None] * len(tasks)
    with tqdm(total=len(tasks), desc="ingest", unit="patient") as progress:
        if workers == 1 or len(tasks) == 1:
            for index, task in enumerate(tasks):
                results[index] = ingest_patient(task, staging)
                progress.update()
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
                futures = {pool.submit(ingest_patient, task, staging): i for i, task in enumerate(tasks)}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    progress.update()
    return [r for r in results if r is not None]


def has_patient_folders(raw_dir: Path) -> bool:
    """True when ``raw_dir`` exists and holds at least one patient sub-folder."""
    return raw_dir.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in raw_dir.iterdir())


def write_empty_cohort(out_dir: Path) -> CohortResult:
    """``out_dir`` with a header-only manifest.csv and a report of no patients: what an optional cohort
    (data/external) writes when its folder is missing or empty, so that the stages after it can say so."""
    manifest = pd.DataFrame(columns=list(MANIFEST_COLUMNS))
    report: dict[str, object] = {"summary": {"patients_found": 0, "patients_ok": 0, "patients_excluded": 0}}
    with _staged_dir(out_dir) as staging:
        write_csv(staging / "manifest.csv", manifest)
        write_json(staging / "report.json", report)
    return CohortResult(manifest, report, {"patients_found": 0, "patients_ok": 0, "patients_excluded": 0})


def ingest_cohort(
    raw_dir: Path, out_dir: Path, params: IngestParams, *, salt: str | None = None
) -> CohortResult:
    """Ingest every patient folder of ``raw_dir`` into ``out_dir`` (rebuilt from scratch).

    Writes ``out_dir/<key>/<flair|t2|t1c>.nii.gz`` for each patient with a label and all three sequences,
    ``out_dir/manifest.csv`` (:data:`MANIFEST_COLUMNS`) and ``out_dir/report.json``; returns them with
    the flat metrics dict. Keys follow ``params.patient_key`` (:mod:`metastases.ingest.keys`); ``salt``
    replaces the configured secret salt (environment or salt file) when given. Bad input is reported,
    never raised; a missing or empty ``raw_dir``, a refused salt, or no usable patient at all raise
    :class:`UserError` (the last after writing the report, so that it can be read).

    Args:
        raw_dir: the raw DICOM root, one sub-folder per patient (plus labels.csv).
        out_dir: the output folder, rebuilt from scratch.
        params: the ingest params.
        salt: the secret salt of hashed keys; None reads it from the environment or the salt file.
    """
    folders = find_patients(raw_dir)
    scheme = key_scheme(raw_dir, [folder.name for folder in folders], params, salt=salt)
    csv_labels, csv_bad = read_labels_csv(raw_dir, params.label_prefixes)
    tasks = []
    for folder in folders:
        label, label_problem = resolve_label(folder.name, csv_labels, csv_bad, params)
        tasks.append(PatientTask(folder, patient_key(folder.name, scheme), label, label_problem, params))
    keys = [task.key for task in tasks]
    if len(set(keys)) != len(keys):
        raise UserError("two patient folders map to the same key; use distinct folder names or another salt")
    orphans = sorted((set(csv_labels) | set(csv_bad)) - {folder.name for folder in folders})
    # other entries at the raw root (stray files, hidden folders) are listed by count only: names may identify
    stray = [
        p
        for p in raw_dir.iterdir()
        if p not in folders and p.name not in (LABELS_FILE, LESIONS_FILE, DEMO_MARKER)
    ]
    workers = cpu_workers(params.workers)
    log.info("ingesting %d patient(s) from %s with %d worker(s)", len(tasks), raw_dir, workers)

    with _staged_dir(out_dir) as staging:
        results = _run_patients(tasks, staging, workers)
        extra = [
            Problem(
                patient_key(name, scheme),
                "",
                f"{LABELS_FILE} lists a patient with no folder",
                "label_without_patient",
            )
            for name in orphans
        ]
        manifest = pd.DataFrame([r.manifest_row() for r in results], columns=list(MANIFEST_COLUMNS))
        report = _report(results, extra, len(stray), scheme=scheme, params=params)
        write_csv(staging / "manifest.csv", manifest)
        write_json(staging / "report.json", report)
    metrics = _metrics(report)
    _log_summary(report)
    if not any(result.status == "ok" for result in results):
        raise UserError(
            f"no usable patient: all {len(results)} patient folder(s) were excluded (first reason: "
            f"{_first_reason(results)}); see {out_dir / 'report.json'}"
        )
    return CohortResult(manifest, report, metrics)


def _first_reason(results: list[PatientResult]) -> str:
    """The most common exclusion reason, shortened, for the one-line error."""
    reasons = collections.Counter(r.notes[0] if r.notes else "unknown" for r in results)
    reason = reasons.most_common(1)[0][0]
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _report(
    results: list[PatientResult],
    extra: list[Problem],
    stray: int,
    *,
    scheme: KeyScheme,
    params: IngestParams,
) -> dict[str, object]:
    """report.json: problems, skipped series, the studies of patients with several, and the summary.

    Args:
        results: every patient's result, in folder order.
        extra: cohort-level problems (labels without a folder).
        stray: entries at the raw root that are not patient folders (counted, never named).
        scheme: how patient keys were made (stated, with the salt's fingerprint when hashed).
        params: the ingest params (the study and derived rules are stated).
    """
    problems = [p for r in results for p in r.problems] + extra
    skipped = [s for r in results for s in r.skipped]
    if stray:
        reason = f"{stray} entr(y/ies) at the raw root that are not patient folders (hidden or files)"
        skipped.append(Skipped("", "", reason))
    kinds = collections.Counter(p.kind for p in problems)
    ok = sum(r.status == "ok" for r in results)
    summary: dict[str, object] = {
        "patients_found": len(results),
        "patients_ok": ok,
        "patients_excluded": len(results) - ok,
        "files_read": sum(r.files_read for r in results),
        "series_read": sum(r.series_read for r in results),
        "problems": len(problems),
        "skipped": len(skipped),
        "problems_by_kind": {kind: kinds.get(kind, 0) for kind in PROBLEM_KINDS},
        "sequence_match_order": list(MATCH_ORDER),
        "choice_rule": CHOICE_RULE,
        "derived_series_allowed": params.allow_derived,
        "derived_series_used": sum(info.derived for r in results for info in r.sequences.values()),
        "study_rule": f"{params.study}: {STUDY_RULES_TEXT[params.study]}",
        "patients_with_several_studies": sum(len(r.studies) > 1 for r in results),
        "patient_keys": scheme.why,
        "salt_fingerprint": scheme.salt_fingerprint,
    }
    return {
        "problems": [dataclasses.asdict(p) for p in problems],
        "skipped": [dataclasses.asdict(s) for s in skipped],
        "studies": {r.key: r.studies for r in results if len(r.studies) > 1},
        "summary": summary,
    }


def _metrics(report: dict[str, object]) -> dict[str, int]:
    """Flat integers for ``dvc metrics diff``: counts of patients, files, series and each problem kind."""
    summary = report["summary"]
    assert isinstance(summary, dict)
    metrics = {
        key: int(summary[key])
        for key in (
            "patients_found",
            "patients_ok",
            "patients_excluded",
            "series_read",
            "files_read",
            "problems",
            "skipped",
            "derived_series_used",
            "patients_with_several_studies",
        )
    }
    metrics.update({f"problems_{kind}": int(n) for kind, n in summary["problems_by_kind"].items()})
    return metrics


def _log_summary(report: dict[str, object]) -> None:
    problems = report["problems"]
    assert isinstance(problems, list)
    for problem in problems[:_LOGGED_PROBLEMS]:
        where = f" {problem['series']}:" if problem["series"] else ""
        log.warning("%s:%s %s", problem["patient"], where, problem["reason"])
    if len(problems) > _LOGGED_PROBLEMS:
        log.warning("... and %d more problem(s), see report.json", len(problems) - _LOGGED_PROBLEMS)
    skipped = report["skipped"]
    assert isinstance(skipped, list)
    unmatched = collections.Counter(
        s["series"].split(" ", 2)[-1] for s in skipped if s["reason"] == UNMATCHED_REASON
    )
    if unmatched:
        listed = ", ".join(f"{description} x{count}" for description, count in unmatched.most_common())
        log.info(
            "series matching no pattern (by SeriesDescription, times seen): %s; if one of them is a FLAIR, "
            "T2 or T1+C, add a regular expression to ingest.sequences.flair, .t2 or .t1c in params.yaml",
            listed,
        )
    summary = report["summary"]
    assert isinstance(summary, dict)
    log.info(
        "%d patient(s): %d ok, %d excluded; %d file(s), %d series; %d problem(s), %d series skipped",
        summary["patients_found"],
        summary["patients_ok"],
        summary["patients_excluded"],
        summary["files_read"],
        summary["series_read"],
        summary["problems"],
        summary["skipped"],
    )
