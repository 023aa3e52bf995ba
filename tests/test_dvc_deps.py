"""dvc.yaml describes the code: each stage's deps cover every project module its script imports."""

from __future__ import annotations

import dataclasses
import re
import shutil
import sys
from pathlib import Path

import yaml

from metastases.params import TrainingParams

sys.path.insert(0, str(Path(__file__).parent))
from import_closure import ROOT, covered, import_closure


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_stage_lists_the_modules_its_script_imports() -> None:
    missing: dict[str, list[str]] = {}
    for name, stage in _stages().items():
        script = re.search(r"python (stages/\S+\.py)", stage["cmd"])
        assert script, f"stage {name}: cmd does not run a stage script"
        deps = [str(d) for d in stage["deps"]]
        absent = [str(p) for p in sorted(import_closure(ROOT / script.group(1))) if not covered(p, deps)]
        if absent:
            missing[name] = absent
    assert not missing, f"dvc.yaml deps miss imported modules: {missing}"


def test_the_closure_follows_imports_through_packages(tmp_path: Path) -> None:
    """The checker itself can fail: a stage importing a module through another one is seen."""
    closure = {str(p) for p in import_closure(ROOT / "stages/train.py")}
    assert {"src/metastases/training/stage.py", "src/metastases/models/volume_mil.py"} <= closure
    assert "src/metastases/params.py" in closure and "src/metastases/training/__init__.py" in closure
    assert not covered(Path("src/metastases/params.py"), ["src/metastases/training"])
    assert covered(Path("src/metastases/training/loop.py"), ["src/metastases/training"])


def test_the_data_stages_do_not_depend_on_training_code() -> None:
    """Editing a model or the training loop must never re-run ingest or the array stages."""
    for name in ("ingest", "split", "slice-2d", "stack-3d"):
        stage = _stages()[name]
        script = re.search(r"python (stages/\S+\.py)", stage["cmd"])
        assert script is not None
        closure = import_closure(ROOT / script.group(1))
        layers = ("models", "training", "evaluation", "compare")
        heavy = [str(p) for p in closure if len(p.parts) > 3 and p.parts[2] in layers]
        assert not heavy, f"{name} imports {heavy}"
        assert not any(str(d).startswith("src/metastases/models") for d in stage["deps"])


def test_no_param_is_named_like_a_key_the_run_cache_ignores() -> None:
    """DVC's run-cache drops keys named size or nfiles (treeverse/dvc#10296)."""

    def keys(node: object) -> list[str]:
        if isinstance(node, dict):
            return [str(k) for k in node] + [k for v in node.values() for k in keys(v)]
        return []

    assert not {"size", "nfiles"} & set(keys(yaml.safe_load((ROOT / "params.yaml").read_text())))
    assert shutil.which("dvc") or (ROOT / ".venv/bin/dvc").exists()


def test_every_training_field_that_changes_the_numbers_is_a_param_of_both_train_stages() -> None:
    """The speed-only fields are declared once (``TrainingParams.SPEED_ONLY``); every other field is a DVC
    param of train-2d and train-3d, so changing it re-runs training (and nothing else slips out)."""
    fields = {f.name for f in dataclasses.fields(TrainingParams)} - {"dim"}
    numbers = fields - set(TrainingParams.SPEED_ONLY)
    assert set(TrainingParams.SPEED_ONLY) < fields
    for dim in ("2d", "3d"):
        listed = {str(p) for p in _stages()[f"train-{dim}"]["params"]}
        section = f"train_{dim}"
        params = {p.split(".", 1)[1] for p in listed if p.startswith(f"{section}.")}
        assert section not in listed, f"{section} as a whole would make speed-only settings re-run training"
        assert params == numbers, f"train-{dim}: missing {numbers - params}, speed-only {params - numbers}"


def test_every_benchmark_stage_lists_the_modules_its_script_imports() -> None:
    """benchmark/dvc.yaml runs the main stage scripts and its own from ``benchmark/``: its deps (relative
    to it) cover every project module each imports, so a code change re-runs exactly what it touches."""
    stages = yaml.safe_load((ROOT / "benchmark/dvc.yaml").read_text())["stages"]
    missing: dict[str, list[str]] = {}
    for name, stage in stages.items():
        found = re.search(r"python (?:\.\./(stages/\S+\.py)|-m metastases\.(\S+))", stage["cmd"])
        assert found, f"benchmark stage {name}: cmd runs no stage script or module"
        script = (
            ROOT / found.group(1)
            if found.group(1)
            else ROOT / "src/metastases" / found.group(2) / "__main__.py"
        )
        deps = [str(Path(d).relative_to("..")) for d in stage["deps"] if str(d).startswith("../")]
        absent = [str(p) for p in sorted(import_closure(script)) if not covered(p, deps)]
        if absent:
            missing[name] = absent
    assert not missing, f"benchmark/dvc.yaml deps miss imported modules: {missing}"


def test_the_benchmark_runs_depend_on_no_module_they_do_not_import() -> None:
    """A run takes minutes to hours: editing code it never imports (the external stage, the train stage's
    script helpers) must not make the finished runs stale, so their code deps list files, not packages
    that hold more than a run imports."""
    stages = yaml.safe_load((ROOT / "benchmark/dvc.yaml").read_text())["stages"]
    for name in ("curve", "baselines"):
        stage = stages[name]
        script = re.search(r"python \.\./(stages/\S+\.py)", stage["cmd"])
        assert script, f"benchmark stage {name}: cmd runs no stage script"
        listed: set[Path] = set()
        for dep in (ROOT / str(d)[3:] for d in stage["deps"] if str(d).startswith("../")):
            listed |= set(dep.rglob("*.py")) if dep.is_dir() else {dep}
        unused = {p.relative_to(ROOT) for p in listed} - import_closure(ROOT / script.group(1))
        assert not unused, f"{name} depends on modules it never imports: {sorted(map(str, unused))}"
