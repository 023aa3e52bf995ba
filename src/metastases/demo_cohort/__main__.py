"""``python -m metastases.demo_cohort OUT_DIR --patients N --seed S [--workers W] [--size-scale F]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from metastases.cli import configure_logging, run_stage
from metastases.demo_cohort.cohort import build_cohort
from metastases.errors import ParamsError


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments raise ParamsError, which run_stage prints as one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ParamsError(f"{message} (see --help)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = _OneLineParser(
        prog="python -m metastases.demo_cohort",
        description="Write the synthetic demo cohort of brain-MRI DICOM studies and labels.csv.",
    )
    parser.add_argument("out_dir", help="output folder (empty, missing, or a previous demo cohort)")
    parser.add_argument("--patients", type=int, default=60, help="number of patients (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes (default: %(default)s)")
    parser.add_argument(
        "--size-scale", type=float, default=1.0, help="shrink image matrices, for quick tests (default: 1)"
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    build_cohort(args.out_dir, args.patients, args.seed, args.workers, args.size_scale)


if __name__ == "__main__":
    sys.exit(run_stage(main))
