"""One epoch of the original study's recipe on every patient of an array folder: time and memory at S = 512.

    /usr/bin/time -v python scripts/fit_one_epoch.py {2d,3d} ARRAY_DIR [MICRO_BATCH]

Trains alexnet2d (2d) or lenet3d (3d) with the benchmark's study recipe (Adam lr 1e-4 constant, batch 10,
no augmentation but flips, 1 torch thread, 1 loader worker, CPU) for one epoch on all patients of ARRAY_DIR
(index.csv and <patient>.npy, as slice-2d / stack-3d write them), without validation, through
``metastases.training.loop.fit``; prints the seconds per training sample as JSON. MICRO_BATCH (default 0:
the whole batch) is ``train_<dim>.micro_batch``. The README's "Scaling" section quotes its numbers.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from metastases.benchmark import STUDY_RECIPE
from metastases.params import training_section
from metastases.training.loop import fit
from metastases.training.runtime import configure_torch

ONE_CPU = {"epochs": 1, "threads": 1, "num_workers": 1, "parallel_folds": 1, "device": "cpu"}


def main() -> int:
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in ("2d", "3d"):
        print(__doc__, file=sys.stderr)
        return 2
    dim, array_dir = sys.argv[1], Path(sys.argv[2])
    micro_batch = int(sys.argv[3]) if len(sys.argv) == 4 else 0
    model = "alexnet2d" if dim == "2d" else "lenet3d"
    params = dataclasses.replace(
        training_section(dim), model=model, micro_batch=micro_batch, **STUDY_RECIPE, **ONE_CPU
    )
    train = pd.read_csv(array_dir / "index.csv", dtype={"patient": str})
    shape = tuple(np.load(array_dir / f"{train['patient'].iloc[0]}.npy", mmap_mode="r").shape)
    device = torch.device("cpu")
    configure_torch(True, 1, device)
    start = time.perf_counter()
    fit(array_dir, train, None, params, 42, device, shape, description=f"{dim} {model}")
    took = time.perf_counter() - start
    result = {"model": model, "shape": list(shape), "samples": len(train), "micro_batch": micro_batch,
              "seconds": round(took, 1), "seconds_per_sample": round(took / len(train), 2)}  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
