"""cross-validate: summarise the out-of-fold predictions of the 2D and 3D fold models.

The train stages trained one model per fold of the training split and scored the fold each left out;
this stage turns those scores into the cross-validated AUC (pooled out-of-fold and per fold), the
decision threshold (chosen on out-of-fold predictions only) and the out-of-fold ROC tables. Nothing is
trained here.
"""

import sys
from collections.abc import Sequence
from pathlib import Path

from metastases.cli import add_models_arguments, chosen, configure_logging, run_stage, stage_parser
from metastases.evaluation.out_of_fold import CrossValidateOutputs, run_cross_validation
from metastases.params import CrossValidateParams, section, train_sections


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    add_models_arguments(parser, arrays=True)
    parser.add_argument("--metrics", type=Path, default=Path("metrics/cv.json"), help="CV summary")
    parser.add_argument(
        "--predictions", type=Path, default=Path("metrics/cv_predictions.csv"), help="out-of-fold scores"
    )
    parser.add_argument("--plots-dir", type=Path, default=Path("plots"), help="cv_roc/model_<dim>.csv")
    parser.add_argument("--raw-dir", type=Path, default=Path("data/raw"), help="lesions.csv, when present")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    params = section(CrossValidateParams, "cross_validate", args.params)
    train_params = train_sections(args.params)
    outputs = CrossValidateOutputs(args.metrics, args.predictions, args.plots_dir)
    run_cross_validation(
        chosen(args, "model"),
        train_params,
        params,
        outputs,
        array_dirs=chosen(args, "data"),
        raw_dir=args.raw_dir,
    )


if __name__ == "__main__":
    sys.exit(run_stage(main))
