"""ingest: raw DICOM tree (one folder per patient) -> data/interim/<patient>/<flair|t2|t1c>.nii.gz,
manifest.csv and report.json, plus flat counts in metrics/ingest.json.

The second site (ingest-external) runs the same code with ``--optional``: a missing or empty raw folder
then writes an empty manifest and says so in one line, instead of stopping the pipeline."""

import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from metastases.cli import configure_logging, run_stage, stage_parser
from metastases.ingest import has_patient_folders, ingest_cohort, write_empty_cohort
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
    parser.add_argument(
        "--optional",
        action="store_true",
        help="a missing or empty raw folder is no error: write an empty manifest (the external cohort)",
    )
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    params = section(IngestParams, "ingest", args.params)
    if args.workers is not None:
        params = dataclasses.replace(params, workers=args.workers)
    raw_dir, out_dir = args.raw_dir or Path(params.raw_dir), args.out_dir or Path(params.out_dir)
    if args.optional and not has_patient_folders(raw_dir):
        logging.getLogger("ingest").info("%s holds no patient folder: no external cohort, nothing to ingest",
                                         raw_dir)  # fmt: skip
        result = write_empty_cohort(out_dir)
    else:
        result = ingest_cohort(raw_dir, out_dir, params)
    write_metrics(args.metrics, result.metrics, ("patients_ok", "patients_excluded"))


if __name__ == "__main__":
    sys.exit(run_stage(main))
