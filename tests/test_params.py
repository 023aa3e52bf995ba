"""params.yaml and the README's documented overrides validate; a bad training value is one clear line."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from metastases.errors import ParamsError
from metastases.params import (
    CrossValidateParams,
    DemoCohortParams,
    EvaluateParams,
    IngestParams,
    SplitParams,
    Train3DParams,
    TrainParams,
    Volume3DParams,
    VolumeParams,
    from_mapping,
    section,
)

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "demo_cohort": DemoCohortParams,
    "ingest": IngestParams,
    "split": SplitParams,
    "slice_2d": VolumeParams,
    "stack_3d": Volume3DParams,
    "train_2d": TrainParams,
    "train_3d": Train3DParams,
    "cross_validate": CrossValidateParams,
    "evaluate": EvaluateParams,
}


def _validate(params: dict) -> dict[str, object]:
    assert set(params) == {"seed", *SECTIONS}
    return {name: from_mapping(cls, name, params[name]) for name, cls in SECTIONS.items()}


def test_committed_params_validate_in_every_section() -> None:
    sections = _validate(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert sections["train_3d"].model == "cnn3d" and sections["train_2d"].model == "cnn2d"


def test_the_readme_seed_faithful_overrides_are_valid_params() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("## Reproducing the original study's settings") :]
    overrides = re.findall(r"-S (\w+)\.(\w+)=(\S+)", block[: block.index("```\n\n")])
    assert len(overrides) >= 20
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section_name, key, value in overrides:
        assert key in params[section_name], f"{section_name}.{key} is not in params.yaml"
        params[section_name][key] = yaml.safe_load(value)  # how `dvc exp run -S` parses values
    sections = _validate(params)
    for name, model in (("train_2d", "alexnet2d"), ("train_3d", "lenet3d")):
        train = sections[name]
        assert (train.model, train.lr, train.lr_schedule, train.batch_size) == (model, 0.0001, "constant", 10)
    assert sections["slice_2d"].image_size == 512 and sections["stack_3d"].depth_mode == "seed"


def test_an_unknown_lr_schedule_is_one_line_naming_the_choices() -> None:
    with pytest.raises(ParamsError, match=r"train_3d\.lr_schedule: 'step' is not one of constant, cosine"):
        from_mapping(Train3DParams, "train_3d", {"lr_schedule": "step"})


def test_params_yaml_is_the_only_source_of_defaults() -> None:
    """Every dataclass default equals the committed params.yaml value: a section left out of a params file
    (a notebook, a test) behaves as the pipeline does, and no second set of defaults drifts."""
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, cls in SECTIONS.items():
        assert set(committed[name]) == {f.name for f in dataclasses.fields(cls)}, name
        assert cls() == from_mapping(cls, name, committed[name]), name


def test_an_unknown_section_or_a_run_cache_blind_key_is_one_clear_line(tmp_path: Path) -> None:
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    misspelt = tmp_path / "params.yaml"
    misspelt.write_text(yaml.safe_dump({**committed, "splt": {"folds": 3}}))
    with pytest.raises(ParamsError, match=r"unknown section\(s\) splt; known: seed, demo_cohort"):
        section(SplitParams, "split", misspelt)
    for key in ("size", "nfiles"):
        with pytest.raises(ParamsError, match=rf"stack_3d\.{key}: .*run-cache ignores that key"):
            from_mapping(VolumeParams, "stack_3d", {key: 64})
