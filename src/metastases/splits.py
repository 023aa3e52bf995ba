"""Patient-level split: a stratified held-out test set and K stratified folds over the rest."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from metastases.errors import UserError
from metastases.params import CLASSES, SplitParams

TEST_FOLD = -1


def make_splits(patients: pd.DataFrame, params: SplitParams, seed: int) -> pd.DataFrame:
    """Assign every patient to ``test`` (fold -1) or to one of K training folds.

    ``patients`` has columns ``patient`` and ``label`` (0 normal, 1 metastases). The result has
    ``patient, label, split, fold``, sorted by patient. Each patient appears exactly once, so no
    patient can be both trained and tested on, and each training patient is validated on exactly once.
    """
    if patients["patient"].duplicated().any():
        raise UserError("duplicate patient keys in the manifest; rerun ingest")
    counts = patients["label"].value_counts()
    n_test = int(np.ceil(params.test_fraction * len(patients)))
    for label, name in enumerate(CLASSES):
        have = int(counts.get(label, 0))
        # each class needs at least one test patient and one patient per training fold
        need = params.folds + 1
        if have < need:
            raise UserError(
                f"only {have} {name} patient(s): a split with {params.folds} folds and a test set needs at "
                f"least {need} per class; add patients or lower split.folds"
            )
    if n_test < len(CLASSES):
        raise UserError(f"split.test_fraction {params.test_fraction} leaves fewer test patients than classes")
    train, test = train_test_split(
        patients, test_size=n_test, stratify=patients["label"], random_state=seed, shuffle=True
    )
    if train["label"].value_counts().min() < params.folds:
        raise UserError(
            f"too few training patients per class for {params.folds} folds; "
            "lower split.folds or split.test_fraction"
        )
    train = train.sort_values("patient").reset_index(drop=True)
    folds = np.empty(len(train), dtype=int)
    splitter = StratifiedKFold(n_splits=params.folds, shuffle=True, random_state=seed)
    for fold, (_, validation) in enumerate(splitter.split(train["patient"], train["label"])):
        folds[validation] = fold
    train = train.assign(split="train", fold=folds)
    test = test.assign(split="test", fold=TEST_FOLD)
    result = pd.concat([train, test]).sort_values("patient").reset_index(drop=True)
    return result[["patient", "label", "split", "fold"]]


def split_summary(splits: pd.DataFrame) -> dict[str, int]:
    """Counts for metrics/split.json: patients per split and class, and the fold count."""
    summary: dict[str, int] = {}
    for split in ("train", "test"):
        part = splits[splits["split"] == split]
        summary[f"{split}_patients"] = len(part)
        for label, name in enumerate(CLASSES):
            summary[f"{split}_{name}"] = int((part["label"] == label).sum())
    summary["folds"] = int(splits.loc[splits["split"] == "train", "fold"].nunique())
    return summary
