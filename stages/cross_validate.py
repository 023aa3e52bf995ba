"""cross-validate: K-fold cross-validation of the 2D and 3D models over the training split.

K is the number of folds in data/splits.csv; model, optimiser and augmentation come from train_2d and
train_3d, the epochs from cross_validate. Writes per-fold and mean metrics, the threshold chosen on the
out-of-fold predictions, the predictions themselves, loss curves and out-of-fold ROC tables.
"""

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from metastases.cli import add_both_models_arguments, configure_logging, run_stage, stage_parser
from metastases.params import CrossValidateParams, section, shared_seed, train_sections
from metastases.training.workflow import CrossValidateOutputs, run_cross_validation


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    add_both_models_arguments(parser)
    parser.add_argument("--metrics", type=Path, default=Path("metrics/cv.json"), help="CV summary")
    parser.add_argument(
        "--predictions", type=Path, default=Path("metrics/cv_predictions.csv"), help="out-of-fold scores"
    )
    parser.add_argument("--plots-dir", type=Path, default=Path("plots"), help="cv_<dim>/, cv_roc/, PNGs")
    parser.add_argument(
        "--timing", type=Path, default=Path("metrics/timing/cross_validate.json"), help="wall time"
    )
    parser.add_argument("--epochs-2d", type=int, help="override cross_validate.epochs_2d")
    parser.add_argument("--epochs-3d", type=int, help="override cross_validate.epochs_3d")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    params = section(CrossValidateParams, "cross_validate", args.params)
    overrides = {k: v for k, v in (("epochs_2d", args.epochs_2d), ("epochs_3d", args.epochs_3d)) if v}
    params = dataclasses.replace(params, **overrides)
    train_params = train_sections(args.params)
    data = {"2d": args.data_2d, "3d": args.data_3d}
    outputs = CrossValidateOutputs(args.metrics, args.predictions, args.plots_dir, args.timing)
    run_cross_validation(
        {dim: data[dim] for dim in args.dims},
        args.splits,
        train_params,
        params,
        shared_seed(args.params),
        outputs,
    )


if __name__ == "__main__":
    sys.exit(run_stage(main))
