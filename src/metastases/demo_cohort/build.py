"""Build the whole cohort: patient specs, a process pool over patients, labels.csv, atomic swap-in."""

from __future__ import annotations

import logging
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from metastases.atomic import write_csv
from metastases.demo_cohort.anatomy import load_template
from metastases.demo_cohort.site import site_profile
from metastases.demo_cohort.synthetic_patient import PatientSpec, lesion_truth, plan_patient, write_patient
from metastases.errors import ParamsError, UserError
from metastases.ingest.keys import DEMO_MARKER, DEMO_MARKER_TEXT
from metastases.lesion_truth import COLUMNS as LESION_COLUMNS
from metastases.lesion_truth import LESIONS_FILE

log = logging.getLogger(__name__)

FOLDER_PREFIX = {"metastases": "mts", "normal": "norma"}
_PATIENT_FOLDER = re.compile(r"^(mts|norma)-\d+$")


def cohort_specs(patients: int, seed: int, size_scale: float = 1.0, *, site: str = "a") -> list[PatientSpec]:
    """Half the patients (rounded up) get metastases; classes are shuffled over patient indices by
    ``seed`` and folders numbered within each class from the site's first number (site a: ``mts-1``,
    ``norma-1``, ...; site b: ``mts-1001``, ...)."""
    first = site_profile(site).first_folder
    labels = ["metastases"] * ((patients + 1) // 2) + ["normal"] * (patients // 2)
    labels = [labels[k] for k in np.random.default_rng(np.random.SeedSequence(seed)).permutation(patients)]
    counters = dict.fromkeys(FOLDER_PREFIX, first - 1)
    specs = []
    for index, label in enumerate(labels):
        counters[label] += 1
        name = f"{FOLDER_PREFIX[label]}-{counters[label]}"
        specs.append(PatientSpec(index, name, label, seed, size_scale, site))
    return specs


def _write_patient(spec: PatientSpec, root: Path) -> tuple[int, list[dict[str, object]]]:
    """Write one patient; return its file count and its ``lesions.csv`` rows."""
    plan = plan_patient(spec, load_template())
    return write_patient(spec, root, plan), lesion_truth(plan)


def _is_previous_cohort(out_dir: Path) -> bool:
    """True when ``out_dir`` holds only labels.csv, the demo marker and mts-/norma- folders of fake
    (demo) patients."""
    entries = list(out_dir.iterdir())
    if not any(e.name == "labels.csv" for e in entries):
        return False
    folders = [e for e in entries if e.name not in ("labels.csv", LESIONS_FILE, DEMO_MARKER)]
    if not all(e.is_dir() and _PATIENT_FOLDER.match(e.name) for e in folders):
        return False
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file())[:1]:
            try:
                name = str(pydicom.dcmread(path, stop_before_pixels=True).get("PatientName", ""))
            except Exception:  # not DICOM: not ours
                return False
            if not name.startswith("FAKE^"):
                return False
    return True


def _check(out_dir: Path, patients: int, seed: int, workers: int, size_scale: float, site: str) -> None:
    site_profile(site)
    if patients < 1:
        raise ParamsError(f"--patients must be at least 1, got {patients}")
    if seed < 0:
        raise ParamsError(f"--seed must be a non-negative integer, got {seed}")
    if workers < 1:
        raise ParamsError(f"--workers must be at least 1, got {workers}")
    if not 0.05 <= size_scale <= 1.0:
        raise ParamsError(f"--size-scale must be between 0.05 and 1, got {size_scale}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a folder; choose another output folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_previous_cohort(out_dir):
        raise UserError(
            f"{out_dir} is not empty and is not a demo cohort; empty it or choose another output folder"
        )


def build_cohort(
    out_dir: str | os.PathLike[str],
    patients: int = 60,
    seed: int = 7,
    workers: int = 2,
    size_scale: float = 1.0,
    *,
    site: str = "a",
) -> Path:
    """Write ``patients`` synthetic studies, ``labels.csv`` (``patient,label``), ``lesions.csv`` (where
    every lesion and mimic is: :mod:`metastases.lesion_truth`) and the demo marker
    (:data:`metastases.ingest.keys.DEMO_MARKER`) into ``out_dir``.

    Same ``seed`` -> byte-identical files whatever ``workers``. ``size_scale`` < 1 shrinks every matrix
    (same field of view and slice counts), for quick tests. A previous demo cohort in ``out_dir`` is
    replaced; any other non-empty folder is refused. The cohort is built beside ``out_dir`` and renamed
    into place, so an interrupted run leaves the old folder untouched.

    Args:
        out_dir: the cohort's folder.
        patients: number of patients, half (rounded up) with metastases.
        seed: the cohort's random seed.
        workers: parallel processes.
        size_scale: matrix scale, 0.05 to 1.
        site: ``a`` (the training site) or ``b`` (another hospital: :mod:`metastases.demo_cohort.site`).
    """
    out_dir = Path(out_dir)
    _check(out_dir, patients, seed, workers, size_scale, site)
    specs = cohort_specs(patients, seed, size_scale, site=site)
    building = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        files = 0
        truth: list[dict[str, object]] = []
        # One BLAS thread everywhere: workers do not oversubscribe the cores, and results cannot depend on
        # how a library splits a product across threads (same bytes whatever ``workers``).
        with tqdm(total=len(specs), desc="demo cohort", unit="patient") as bar, threadpool_limits(1):
            if workers == 1:
                for spec in specs:
                    count, rows = _write_patient(spec, building)
                    files, truth = files + count, truth + rows
                    bar.update()
            else:
                with ProcessPoolExecutor(
                    max_workers=min(workers, len(specs)), initializer=threadpool_limits, initargs=(1,)
                ) as pool:
                    futures = [pool.submit(_write_patient, spec, building) for spec in specs]
                    for future in as_completed(futures):
                        count, rows = future.result()
                        files, truth = files + count, truth + rows
                        bar.update()
        labels = pd.DataFrame({"patient": [s.name for s in specs], "label": [s.label for s in specs]})
        write_csv(building / "labels.csv", labels.sort_values("patient", key=_natural_key))
        # where every lesion is (LPS mm): for scoring where a model looked; ingest and training never read it
        lesions = pd.DataFrame(truth, columns=list(LESION_COLUMNS))
        order = lesions["patient"].map(_natural_key_of).tolist()
        lesions = (
            lesions.assign(_order=order).sort_values(["_order", "kind", "lesion"]).drop(columns="_order")
        )
        write_csv(building / LESIONS_FILE, lesions)
        # tells ingest (patient_key: auto) that the folder names are fake and may stay as patient keys
        (building / DEMO_MARKER).write_text(DEMO_MARKER_TEXT)
        if out_dir.exists():
            trash = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            out_dir.rename(trash)
            building.rename(out_dir)
            shutil.rmtree(trash)
        else:
            building.rename(out_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    log.info("wrote %d patients (%d files) to %s", len(specs), files, out_dir)
    return out_dir


def _natural_key_of(name: str) -> tuple[str, int]:
    return name.split("-")[0], int(name.split("-")[1])


def _natural_key(names: pd.Series) -> pd.Series:
    """Sort ``mts-2`` before ``mts-10``."""
    return names.map(_natural_key_of)
