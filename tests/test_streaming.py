"""Training streams the arrays: its memory grows with a batch, never with the cohort (S = 512 must fit)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_arrays import write_cohort

pytestmark = pytest.mark.slow  # a training subprocess measured for memory: make test, not make test-fast

CHILD = """
import dataclasses, json, resource, sys
from pathlib import Path
from metastases.params import training_section
from metastases.training.stage import TrainOutputs, run_training

root = Path(sys.argv[1])
params = dataclasses.replace(training_section("3d", sys.argv[2]), model="lenet3d", epochs=1, batch_size=4,
                             threads=1, num_workers=0, device="cpu", restarts=0, parallel_folds=1)
outputs = TrainOutputs(model=root / "m.pt", metrics=root / "m.json", curves=root / "c.csv",
                       png=root / "l.png", timing=root / "t.json")
run_training(root / "processed/3d", root / "splits.csv", params, 42, outputs)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"after_kib": after}))
"""


def _peak_rss_training(root: Path) -> int:
    """Peak resident bytes of a fresh process that trains lenet3d's fold models on ``root`` (one epoch)."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(Path(__file__).parents[1] / "params.yaml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return int(json.loads(result.stdout.strip().splitlines()[-1])["after_kib"]) * 1024  # KiB on Linux


@pytest.mark.slow
def test_training_memory_grows_with_a_batch_not_with_the_cohort(tmp_path: Path) -> None:
    """The same training (lenet3d, batch 4, two fold models, one epoch, then scoring and writing) on 24
    and on 240 patients of [3, 20, 64, 64] float16: the 216 extra patients are 106 MB of arrays, and the
    larger run's peak resident memory may exceed the smaller's by less than half of that (measured:
    9 MB); loading the cohort whole, as float16 or float32, would add all of it or twice that."""
    peaks, sizes = [], []
    for patients in (24, 240):
        root = tmp_path / str(patients)
        paths = write_cohort(root, patients=patients, size_2d=32, size_3d=64, folds=2, seed=3)
        sizes.append(sum(p.stat().st_size for p in paths["3d"].glob("*.npy")))
        peaks.append(_peak_rss_training(root))
        assert json.loads((root / "details/m.json").read_text())["train_patients"] == patients * 3 // 4
    extra = sizes[1] - sizes[0]
    assert extra > 100e6
    grown = peaks[1] - peaks[0]
    assert grown < extra / 2, f"peak RSS grew {grown / 1e6:.0f} MB for {extra / 1e6:.0f} MB more arrays"
