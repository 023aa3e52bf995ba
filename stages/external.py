"""external: score the second site's patients (data/external, ingested by ingest-external) with the final
fold ensembles at the threshold chosen out of fold on the training site; then the documented adaptation
(the threshold chosen again on a calibration share of the site). AUC with its bootstrap CI, sensitivity,
specificity and more before and after, Brier score, localisation when the site has lesions.csv.
Without an external cohort it writes empty outputs and says so in one line."""

import sys
from collections.abc import Sequence
from pathlib import Path

from metastases.cli import add_models_arguments, chosen, configure_logging, run_stage, stage_parser
from metastases.evaluation.external import Cohorts, ExternalOutputs, run_external
from metastases.params import EvaluateParams, ExternalParams, section, shared_seed, train_sections


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--interim-dir", type=Path, default=Path("data/external_interim"), help="its ingest")
    parser.add_argument("--raw-dir", type=Path, default=Path("data/external"), help="its DICOM, lesions.csv")
    parser.add_argument(
        "--internal-interim-dir", type=Path, default=Path("data/interim"), help="training site"
    )
    parser.add_argument("--internal-raw-dir", type=Path, default=Path("data/raw"), help="training site DICOM")
    add_models_arguments(parser)
    parser.add_argument("--cv-metrics", type=Path, default=Path("metrics/details/cv.json"), help="thresholds")
    parser.add_argument("--metrics", type=Path, default=Path("metrics/external.json"), help="metrics")
    parser.add_argument(
        "--predictions", type=Path, default=Path("metrics/external_predictions.csv"), help="scores"
    )
    parser.add_argument("--plots-dir", type=Path, default=Path("plots"), help="external_roc/, PNGs")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    run_external(
        Cohorts(args.interim_dir, args.raw_dir, args.internal_interim_dir, args.internal_raw_dir),
        chosen(args, "model"),
        args.cv_metrics,
        params=section(ExternalParams, "external", args.params),
        evaluate_params=section(EvaluateParams, "evaluate", args.params),
        train_params=train_sections(args.params),
        seed=shared_seed(args.params),
        outputs=ExternalOutputs(args.metrics, args.predictions, args.plots_dir),
    )


if __name__ == "__main__":
    sys.exit(run_stage(main))
