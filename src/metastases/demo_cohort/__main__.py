"""``python -m metastases.demo_cohort OUT_DIR --patients N --seed S [--workers W] [--size-scale F]
[--site a|b]``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from metastases.cli import OneLineParser, configure_logging, run_stage
from metastases.demo_cohort.build import build_cohort
from metastases.demo_cohort.site import SITES
from metastases.errors import ParamsError
from metastases.params import DemoCohortParams, section


def main(argv: Sequence[str] | None = None) -> None:
    parser = OneLineParser(
        prog="python -m metastases.demo_cohort",
        description="Write the synthetic demo cohort of brain-MRI DICOM studies and labels.csv.",
    )
    parser.add_argument("out_dir", help="output folder (empty, missing, or a previous demo cohort)")
    parser.add_argument("--patients", type=int, help="number of patients (default: from --from-params)")
    parser.add_argument("--seed", type=int, help="random seed (default: from --from-params)")
    parser.add_argument(
        "--from-params", type=Path, help="take defaults from this params.yaml (see --section)"
    )
    parser.add_argument(
        "--section",
        choices=("demo_cohort", "demo_external"),
        default="demo_cohort",
        help="which section of --from-params: the training site or the second site (default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=2, help="parallel processes (default: %(default)s)")
    parser.add_argument(
        "--size-scale", type=float, default=1.0, help="shrink image matrices, for quick tests (default: 1)"
    )
    parser.add_argument(
        "--site",
        choices=sorted(SITES),
        help="a: the training site; b: another hospital's scanner and protocol (default: a, or from "
        "--from-params)",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if args.from_params:
        defaults = section(DemoCohortParams, args.section, args.from_params)
        patients, seed, site = defaults.patients, defaults.seed, defaults.site
    elif args.patients is None or args.seed is None:
        raise ParamsError("give --patients and --seed, or --from-params params.yaml")
    else:
        patients, seed, site = args.patients, args.seed, "a"
    patients = args.patients if args.patients is not None else patients
    seed = args.seed if args.seed is not None else seed
    site = args.site if args.site is not None else site
    build_cohort(args.out_dir, patients, seed, args.workers, args.size_scale, site=site)


if __name__ == "__main__":
    sys.exit(run_stage(main))
