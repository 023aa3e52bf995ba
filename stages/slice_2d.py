"""slice-2d: each patient's three volumes -> one [3 x 20, S, S] array (sequences x slices as channels)."""

import sys

import _array_stage
from metastases.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage(lambda argv: _array_stage.main("2d", "slice_2d", __doc__, argv)))
