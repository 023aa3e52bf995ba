import pandas as pd
import pytest

from metastases.errors import UserError
from metastases.params import SplitParams
from metastases.splits import make_splits


def cohort(n_normal: int, n_metastases: int) -> pd.DataFrame:
    patients = [f"norma-{i}" for i in range(n_normal)] + [f"mts-{i}" for i in range(n_metastases)]
    return pd.DataFrame({"patient": patients, "label": [0] * n_normal + [1] * n_metastases})


def test_every_patient_once_test_held_out_and_folds_partition_training():
    splits = make_splits(cohort(30, 30), SplitParams(test_fraction=0.2, folds=5), seed=3)
    assert sorted(splits["patient"]) == sorted(cohort(30, 30)["patient"])
    test = splits[splits["split"] == "test"]
    train = splits[splits["split"] == "train"]
    assert len(test) == 12 and set(test["fold"]) == {-1}
    assert set(test["patient"]).isdisjoint(train["patient"])
    assert sorted(train["fold"].unique()) == [0, 1, 2, 3, 4]
    # stratified: each class split evenly between test and every fold
    assert test["label"].value_counts().to_dict() == {0: 6, 1: 6}
    for _, fold in train.groupby("fold"):
        assert fold["label"].value_counts().min() >= 4


def test_split_is_seeded():
    a = make_splits(cohort(20, 25), SplitParams(), seed=1)
    b = make_splits(cohort(20, 25), SplitParams(), seed=1)
    c = make_splits(cohort(20, 25), SplitParams(), seed=2)
    assert a.equals(b)
    assert not a.equals(c)


def test_too_few_patients_of_a_class_is_a_clear_error():
    with pytest.raises(UserError, match="normal"):
        make_splits(cohort(3, 30), SplitParams(folds=5), seed=0)
