"""split: patient-level stratified hold-out test set and K stratified folds -> data/splits.csv."""

import sys
from collections.abc import Sequence
from pathlib import Path

from metastases.arrays import read_manifest
from metastases.atomic import write_csv
from metastases.cli import configure_logging, run_stage, stage_parser
from metastases.metrics_file import write_metrics
from metastases.params import CLASSES, SplitParams, section, shared_seed
from metastases.splits import make_splits, split_summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--interim-dir", type=Path, default=Path("data/interim"), help="ingest output")
    parser.add_argument("--out", type=Path, default=Path("data/splits.csv"), help="split table")
    parser.add_argument("--metrics", type=Path, default=Path("metrics/split.json"), help="split counts")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    params = section(SplitParams, "split", args.params)
    seed = shared_seed(args.params)
    manifest = read_manifest(args.interim_dir)
    patients = manifest.assign(label=[CLASSES.index(name) for name in manifest["label"]])[
        ["patient", "label"]
    ]
    splits = make_splits(patients, params, seed)
    write_csv(args.out, splits)
    write_metrics(args.metrics, split_summary(splits), ("train_patients", "test_patients"))


if __name__ == "__main__":
    sys.exit(run_stage(main))
