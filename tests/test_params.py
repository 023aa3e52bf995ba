"""params.yaml and the README's documented overrides validate; a bad training value is one clear line."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metastases.errors import ParamsError
from metastases.params import (
    CrossValidateParams,
    DemoCohortParams,
    EvaluateParams,
    ExternalParams,
    IngestParams,
    SplitParams,
    TrainingParams,
    VolumeParams,
    from_mapping,
    section,
)

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "demo_cohort": DemoCohortParams,
    "demo_external": DemoCohortParams,
    "ingest": IngestParams,
    "split": SplitParams,
    "slice_2d": VolumeParams,
    "stack_3d": VolumeParams,
    "train_2d": TrainingParams,
    "train_3d": TrainingParams,
    "cross_validate": CrossValidateParams,
    "evaluate": EvaluateParams,
    "external": ExternalParams,
}


def _load(name: str, mapping: object) -> object:
    """One section as the stages load it (a training section's dim comes from its name)."""
    if SECTIONS[name] is TrainingParams and isinstance(mapping, dict):
        mapping = {**mapping, "dim": name[-2:]}
    return from_mapping(SECTIONS[name], name, mapping)  # type: ignore[arg-type]


def _committed_with(name: str, text: str) -> object:
    """The committed section ``name`` with the YAML ``text`` over it (a mapping), else ``text`` alone."""
    changed = yaml.safe_load(text)
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())[name]
    return {**committed, **changed} if isinstance(changed, dict) else changed


def _validate(params: dict) -> dict[str, object]:
    assert set(params) == {"seed", *SECTIONS}
    return {name: _load(name, params[name]) for name in SECTIONS}


def test_committed_params_validate_in_every_section() -> None:
    sections = _validate(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert sections["train_3d"].model == "cnn3d" and sections["train_2d"].model == "cnn2d"


def test_the_documented_study_overrides_are_valid_params() -> None:
    """The ``dvc exp run -S`` block that reproduces the original study's settings (README or docs/)."""
    heading = "## Running the study's settings"
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    page = next(p.read_text() for p in pages if heading in p.read_text())
    block = page[page.index(heading) :]
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
    assert sections["slice_2d"].image_size == 512 and sections["stack_3d"].depth_mode == "study"


def test_an_unknown_lr_schedule_is_one_line_naming_the_choices() -> None:
    with pytest.raises(ParamsError, match=r"train_3d\.lr_schedule: 'step' is not one of constant, cosine"):
        _load("train_3d", _committed_with("train_3d", "lr_schedule: step"))


def test_params_yaml_is_the_only_source_of_defaults() -> None:
    """Every key of params.yaml is a field and the other way round; a field with a default has the
    committed value (a section left out of a params file behaves as the pipeline does, no second set of
    defaults drifts), and the training sections and the arrays' image size have none at all."""
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, cls in SECTIONS.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(committed[name]) == set(fields) - {"dim"}, name
        loaded = _load(name, committed[name])
        for key, field in fields.items():
            if field.default is not dataclasses.MISSING:
                assert field.default == getattr(loaded, key), f"{name}.{key}"
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(TrainingParams))
    assert dataclasses.fields(VolumeParams)[0].default is dataclasses.MISSING


def test_a_training_section_left_incomplete_names_the_missing_keys() -> None:
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())["train_2d"]
    incomplete = {k: v for k, v in committed.items() if k not in ("lr", "precision")}
    with pytest.raises(
        ParamsError, match=r"^train_2d: missing key\(s\) lr, precision: params.yaml sets each"
    ):
        _load("train_2d", incomplete)


def test_an_unknown_section_or_a_run_cache_blind_key_is_one_clear_line(tmp_path: Path) -> None:
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    misspelt = tmp_path / "params.yaml"
    misspelt.write_text(yaml.safe_dump({**committed, "splt": {"folds": 3}}))
    with pytest.raises(ParamsError, match=r"unknown section\(s\) splt; known: seed, demo_cohort"):
        section(SplitParams, "split", misspelt)
    for key in ("size", "nfiles"):
        with pytest.raises(ParamsError, match=rf"stack_3d\.{key}: .*run-cache ignores that key"):
            from_mapping(VolumeParams, "stack_3d", {key: 64})


def test_numbers_in_any_yaml_spelling_are_accepted() -> None:
    # PyYAML (YAML 1.1) reads 3e-3 and 1e2 (no dot) as strings: they are numbers all the same
    loaded = yaml.safe_load("lr: 3e-3\nepochs: 1e2\nbatch_size: 8.0\nweight_decay: 1_000e-7\n")
    assert isinstance(loaded["lr"], str)
    train = _load("train_2d", _committed_with("train_2d", "{}") | loaded)  # type: ignore[operator]
    assert (train.lr, train.epochs, train.batch_size, train.weight_decay) == (0.003, 100, 8, 0.0001)
    assert isinstance(train.epochs, int) and isinstance(train.lr, float)
    volume = _load("slice_2d", _committed_with("slice_2d", "clip_percentiles: ['5e-1', 99]"))
    assert volume.clip_percentiles == (0.5, 99.0)


@pytest.mark.parametrize(
    ("cls", "name", "text", "message"),
    [
        (TrainingParams, "train_2d", "lr: fast", r"^train_2d\.lr: expected a number, got 'fast'$"),
        (TrainingParams, "train_2d", "epochs: 2.5", r"^train_2d\.epochs: expected a whole number, got 2\.5$"),
        (TrainingParams, "train_2d", "epochs: 1e-1", r"^train_2d\.epochs: expected a whole number"),
        (TrainingParams, "train_2d", "lr: .nan", r"^train_2d\.lr: expected a finite number"),
        (TrainingParams, "train_2d", "model: 5", r"^train_2d\.model: expected text, got 5$"),
        (TrainingParams, "train_2d", "deterministic: 1", r"^train_2d\.deterministic: expected true or false"),
        (
            VolumeParams,
            "slice_2d",
            "clip_percentiles: [1, 2, 3]",
            r"^slice_2d\.clip_percentiles: expected a list of 2",
        ),
        (
            VolumeParams,
            "slice_2d",
            "clip_percentiles: 5",
            r"^slice_2d\.clip_percentiles: expected a list of 2",
        ),
        (
            VolumeParams,
            "slice_2d",
            "clip_percentiles: [99, 1]",
            r"^slice_2d\.clip_percentiles: need 0 <= low < high",
        ),
        (
            VolumeParams,
            "stack_3d",
            "clip_percentiles: [1, 200]",
            r"^stack_3d\.clip_percentiles: need 0 <= low",
        ),
        (
            VolumeParams,
            "slice_2d",
            "clip_percentiles: [low, 99]",
            r"^slice_2d\.clip_percentiles: expected a number",
        ),
        (SplitParams, "split", "[1, 2]", r"^split: expected a mapping of keys, got \[1, 2\]$"),
        (SplitParams, "split", "folds: [1, 2]", r"^split\.folds: expected a whole number, got \[1, 2\]$"),
        (IngestParams, "ingest", "sequences: [flair]", r"^ingest\.sequences: expected a mapping of keys"),
        (
            IngestParams,
            "ingest",
            "sequences: {flair: flair, t2: [t2], t1c: [t1]}",
            r"^ingest\.sequences\.flair: expected a list, got 'flair'$",
        ),
        (
            IngestParams,
            "ingest",
            "label_prefixes: [mts]",
            r"^ingest\.label_prefixes: expected a mapping of keys",
        ),
        (
            IngestParams,
            "ingest",
            "study: newest",
            r"^ingest\.study: 'newest' is not one of latest, earliest$",
        ),
        (IngestParams, "ingest", "patient_key: name", r"^ingest\.patient_key: 'name' is not one of auto"),
        (IngestParams, "ingest", "salt: pepper", r"^ingest: unknown key\(s\) salt; known: "),
        (IngestParams, "ingest", "allow_derived: maybe", r"^ingest\.allow_derived: expected true or false"),
    ],
)
def test_a_bad_value_is_one_line_naming_section_and_key(
    cls: type, name: str, text: str, message: str
) -> None:
    with pytest.raises(ParamsError, match=message) as caught:
        _load(name, _committed_with(name, text))
    assert "\n" not in str(caught.value)


def test_a_bad_params_file_is_one_line_from_the_stage_script(tmp_path: Path) -> None:
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    committed["slice_2d"]["clip_percentiles"] = [1, 2, 3]
    committed["train_2d"]["lr"] = "3e-3"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(committed))
    completed = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "slice_2d.py"), "--params", str(tmp_path / "params.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines() == [
        "error: slice_2d.clip_percentiles: expected a list of 2 values, got 3: [1, 2, 3]"
    ]
