"""train-2d / train-3d: train one classifier on the training split (one fold held out for validation).

Writes the model (state dict + what rebuilds it), per-iteration and per-epoch curves, a loss picture
and the final metrics. Test patients are never read.
"""

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from metastases.cli import configure_logging, run_stage, stage_parser
from metastases.params import Train3DParams, TrainParams, section, shared_seed
from metastases.training.workflow import TrainOutputs, run_training


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--dim", choices=("2d", "3d"), required=True, help="which model: params train_<dim>")
    parser.add_argument("--data-dir", type=Path, help="arrays + index.csv (default: data/processed/<dim>)")
    parser.add_argument("--splits", type=Path, default=Path("data/splits.csv"), help="split table")
    parser.add_argument("--model-out", type=Path, help="checkpoint (default: models/<dim>.pt)")
    parser.add_argument("--metrics", type=Path, help="final metrics (default: metrics/train_<dim>.json)")
    parser.add_argument("--plots-dir", type=Path, help="loss.csv and val.csv (default: plots/train_<dim>)")
    parser.add_argument("--png", type=Path, help="loss picture (default: plots/loss_<dim>.png)")
    parser.add_argument(
        "--timing", type=Path, help="wall time, data-wait share (metrics/timing/train_<dim>.json)"
    )
    parser.add_argument("--epochs", type=int, help="override train_<dim>.epochs (ad-hoc runs and tests)")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    cls = TrainParams if args.dim == "2d" else Train3DParams
    params = section(cls, f"train_{args.dim}", args.params)
    if args.epochs is not None:
        params = dataclasses.replace(params, epochs=args.epochs)
    defaults = TrainOutputs.for_dim(args.dim)
    outputs = TrainOutputs(
        model=args.model_out or defaults.model,
        metrics=args.metrics or defaults.metrics,
        plots_dir=args.plots_dir or defaults.plots_dir,
        png=args.png or defaults.png,
        timing=args.timing or defaults.timing,
    )
    data_dir = args.data_dir or Path(f"data/processed/{args.dim}")
    run_training(data_dir, args.splits, params, shared_seed(args.params), outputs)


if __name__ == "__main__":
    sys.exit(run_stage(main))
