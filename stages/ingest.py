"""ingest: raw DICOM tree (one folder per patient) -> data/interim/<patient>/<flair|t2|t1c>.nii.gz,
manifest.csv and report.json, plus flat counts in metrics/ingest.json."""

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from metastases.cli import configure_logging, run_stage, stage_parser
from metastases.ingest import ingest_cohort
from metastases.metrics_file import write_metrics
from metastases.params import IngestParams, section


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument(
        "--raw-dir", type=Path, help="raw DICOM root, one sub-folder per patient (default: ingest.raw_dir)"
    )
    parser.add_argument(
        "--out-dir", type=Path, help="output folder, rebuilt each run (default: ingest.out_dir)"
    )
    parser.add_argument(
        "--metrics", type=Path, default=Path("metrics/ingest.json"), help="counts (default: %(default)s)"
    )
    parser.add_argument(
        "--workers", type=int, help="parallel patients, 0: one per core (default: ingest.workers)"
    )
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    params = section(IngestParams, "ingest", args.params)
    if args.workers is not None:
        params = dataclasses.replace(params, workers=args.workers)
    result = ingest_cohort(args.raw_dir or Path(params.raw_dir), args.out_dir or Path(params.out_dir), params)
    write_metrics(args.metrics, result.metrics, ("patients_ok", "patients_excluded"))


if __name__ == "__main__":
    sys.exit(run_stage(main))
