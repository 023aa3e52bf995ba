"""The processed arrays and the patient split a stage reads, checked before any training starts.

``data/processed/{2d,3d}/<patient>.npy`` hold float16 arrays, ``[60, S, S]`` (2d) or ``[3, 20, S, S]``
(3d), with an ``index.csv`` (patient, label); ``data/splits.csv`` has patient, label, split
(train/test) and fold (0..K-1 for train, -1 for test). A stage only opens the arrays of the patients it
uses, so the stages that train never read a test patient's array.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metastases.errors import UserError
from metastases.params import CLASSES

SPLIT_COLUMNS = ("patient", "label", "split", "fold")
DIM_AXES = {"2d": 3, "3d": 4}
REBUILD = {"2d": "dvc repro slice-2d", "3d": "dvc repro stack-3d"}


def read_splits(path: Path) -> pd.DataFrame:
    """``data/splits.csv`` as a frame with integer label and fold; a malformed file is a one-line error."""
    if not path.is_file():
        raise UserError(f"{path} not found: run the split stage first (dvc repro split)")
    splits = pd.read_csv(path, dtype={"patient": str})
    missing = set(SPLIT_COLUMNS) - set(splits.columns)
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}; rerun the split stage")
    if splits["patient"].duplicated().any():
        raise UserError(f"{path}: a patient appears twice; rerun the split stage")
    if not splits["split"].isin(["train", "test"]).all() or not splits["label"].isin([0, 1]).all():
        raise UserError(f"{path}: split must be train/test and label 0/1; rerun the split stage")
    return splits[list(SPLIT_COLUMNS)].astype({"label": int, "fold": int}).reset_index(drop=True)


@dataclass(frozen=True)
class Cohort:
    """One array dim (``2d`` or ``3d``) of the processed cohort together with its split."""

    array_dir: Path
    dim: str
    splits: pd.DataFrame

    def path(self, patient: str) -> Path:
        return self.array_dir / f"{patient}.npy"

    @property
    def folds(self) -> list[int]:
        train = self.splits[self.splits["split"] == "train"]
        return sorted(int(f) for f in train["fold"].unique())

    def part(
        self, split: str, folds: list[int] | None = None, exclude: list[int] | None = None
    ) -> pd.DataFrame:
        """Patients (patient, label) of ``split``, restricted to or excluding some folds."""
        frame = self.splits[self.splits["split"] == split]
        if folds is not None:
            frame = frame[frame["fold"].isin(folds)]
        if exclude is not None:
            frame = frame[~frame["fold"].isin(exclude)]
        return frame[["patient", "label"]].reset_index(drop=True)

    def sample_shape(self, patients: pd.DataFrame) -> tuple[int, ...]:
        """The common array shape of ``patients``, after checking every file exists and agrees.

        Only the ``.npy`` headers are read (memory-mapped), so this is cheap even at S = 512.
        """
        shapes: dict[tuple[int, ...], str] = {}
        missing = [p for p in patients["patient"] if not self.path(p).is_file()]
        if missing:
            raise UserError(
                f"{self.array_dir}: no array for {len(missing)} patient(s) in the split (e.g. {missing[0]}); "
                f"the processed data are stale: {REBUILD[self.dim]}"
            )
        for patient in patients["patient"]:
            try:
                array = np.load(self.path(patient), mmap_mode="r")
            except (ValueError, OSError) as exc:
                raise UserError(
                    f"{self.path(patient)}: not a readable .npy array ({exc}); rebuild it"
                ) from None
            shapes.setdefault(tuple(array.shape), patient)
        if len(shapes) != 1:
            described = "; ".join(f"{shape} (e.g. {p})" for shape, p in shapes.items())
            raise UserError(f"{self.array_dir}: arrays of different shapes: {described}; {REBUILD[self.dim]}")
        shape = next(iter(shapes))
        if len(shape) != DIM_AXES[self.dim]:
            raise UserError(
                f"{self.array_dir}: arrays have shape {shape}, "
                f"expected {DIM_AXES[self.dim]} axes for the "
                f"{self.dim} arrays; {REBUILD[self.dim]}"
            )
        return shape


def load_cohort(array_dir: Path, splits_path: Path, dim: str) -> Cohort:
    """Read the split and the array index and check that they describe the same patients and labels."""
    splits = read_splits(splits_path)
    index_path = array_dir / "index.csv"
    if not index_path.is_file():
        raise UserError(f"{index_path} not found: build the arrays first ({REBUILD[dim]})")
    index = pd.read_csv(index_path, dtype={"patient": str})
    if not {"patient", "label"} <= set(index.columns):
        raise UserError(f"{index_path}: needs columns patient,label; {REBUILD[dim]}")
    merged = splits.merge(index[["patient", "label"]], on="patient", how="left", suffixes=("", "_index"))
    absent = merged[merged["label_index"].isna()]
    if not absent.empty:
        raise UserError(
            f"{index_path} lacks {len(absent)} patient(s) of {splits_path} "
            f"(e.g. {absent['patient'].iloc[0]}): "
            f"the arrays and the split are from different runs; run dvc repro"
        )
    disagree = merged[merged["label"] != merged["label_index"].astype(int)]
    if not disagree.empty:
        raise UserError(
            f"{index_path} and {splits_path} disagree on the label of "
            f"{disagree['patient'].iloc[0]}; run dvc repro"
        )
    return Cohort(array_dir=array_dir, dim=dim, splits=splits)


def require_both_classes(labels: pd.Series | np.ndarray, what: str, fix: str) -> None:
    """A set of patients with one class only can neither train a classifier nor be scored by AUC."""
    present = set(np.asarray(labels).tolist())
    if len(present) < len(CLASSES):
        only = ", ".join(CLASSES[int(v)] for v in sorted(present)) or "no patients"
        raise UserError(f"{what} has only {only}: {fix}")
