"""evaluate: score the held-out test patients with the trained 2D and 3D models.

ROC AUC with a bootstrap confidence interval, accuracy, balanced accuracy, sensitivity, specificity and
F1 at 0.5 and at the threshold cross-validation chose; Brier score and reliability diagram; evidence maps
of the multiple-instance models and, when the raw cohort has lesions.csv, how often their strongest
evidence lies inside a true metastasis; predictions, ROC and confusion tables, pictures, MODEL_CARD.md.
"""

import sys
from collections.abc import Sequence
from pathlib import Path

from metastases.cli import add_models_arguments, chosen, configure_logging, run_stage, stage_parser
from metastases.evaluation.held_out import EvaluateOutputs, run_evaluation
from metastases.params import EvaluateParams, section, shared_seed, train_sections


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    add_models_arguments(parser, arrays=True)
    parser.add_argument("--splits", type=Path, default=Path("data/splits.csv"), help="split table")
    parser.add_argument(
        "--cv-metrics",
        type=Path,
        default=Path("metrics/details/cv.json"),
        help="CV thresholds (the full cross-validate metrics)",
    )
    parser.add_argument("--metrics", type=Path, default=Path("metrics/evaluate.json"), help="test metrics")
    parser.add_argument(
        "--predictions", type=Path, default=Path("metrics/predictions.csv"), help="test-patient scores"
    )
    parser.add_argument(
        "--cv-predictions", type=Path, default=Path("metrics/cv_predictions.csv"), help="out-of-fold scores"
    )
    parser.add_argument("--raw-dir", type=Path, default=Path("data/raw"), help="lesions.csv, when present")
    parser.add_argument("--plots-dir", type=Path, default=Path("plots"), help="roc/, confusion/, PNGs")
    parser.add_argument("--model-card", type=Path, default=Path("MODEL_CARD.md"), help="model card")
    parser.add_argument(
        "--external-metrics", type=Path, help="the external site's details (its rows in the model card)"
    )
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    params = section(EvaluateParams, "evaluate", args.params)
    train_params = train_sections(args.params)
    run_evaluation(
        chosen(args, "data"),
        chosen(args, "model"),
        args.splits,
        args.cv_metrics,
        train_params,
        params,
        shared_seed(args.params),
        EvaluateOutputs(args.metrics, args.predictions, args.plots_dir, args.model_card),
        raw_dir=args.raw_dir,
        cv_predictions_path=args.cv_predictions,
        external_metrics_path=args.external_metrics,
    )


if __name__ == "__main__":
    sys.exit(run_stage(main))
