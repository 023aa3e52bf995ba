"""stack-3d: each patient's three volumes -> one [3, 20, S, S] array (sequence as channel, then depth)."""

import sys

import _array_stage
from metastases.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage(lambda argv: _array_stage.main("3d", "stack_3d", __doc__, argv)))
