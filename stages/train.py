"""train-2d / train-3d: train the K fold models of one classifier on the training split.

Fold k's model trains on the other folds and scores fold k (the out-of-fold predictions that
cross-validate summarises); together the K models are the final model, whose mean scores new patients.
Writes the checkpoint (every fold model + what rebuilds it), per-epoch loss curves of every fold, a loss
picture and the metrics, including which fold models learned nothing. Test patients are never read.
"""

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from metastases.cli import configure_logging, run_stage, stage_parser
from metastases.params import shared_seed, training_section, volume_section
from metastases.processes import under_torchrun
from metastases.training.stage import TrainOutputs, launch_distributed, run_training


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--dim", choices=("2d", "3d"), required=True, help="which model: params train_<dim>")
    parser.add_argument("--data-dir", type=Path, help="arrays + index.csv (default: data/processed/<dim>)")
    parser.add_argument("--splits", type=Path, default=Path("data/splits.csv"), help="split table")
    parser.add_argument("--model-out", type=Path, help="checkpoint (default: models/<dim>.pt)")
    parser.add_argument("--metrics", type=Path, help="final metrics (default: metrics/train_<dim>.json)")
    parser.add_argument(
        "--curves", type=Path, help="loss and AUC per epoch and fold (default: plots/train/model_<dim>.csv)"
    )
    parser.add_argument("--png", type=Path, help="loss picture (default: plots/loss_<dim>.png)")
    parser.add_argument(
        "--timing", type=Path, help="wall time, data-wait share (logs/timing/train_<dim>.json, not in Git)"
    )
    parser.add_argument("--epochs", type=int, help="override train_<dim>.epochs (ad-hoc runs and tests)")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    params = training_section(args.dim, args.params)
    if args.epochs is not None:
        params = dataclasses.replace(params, epochs=args.epochs)
    defaults = TrainOutputs.for_dim(args.dim)
    outputs = TrainOutputs(
        model=args.model_out or defaults.model,
        metrics=args.metrics or defaults.metrics,
        curves=args.curves or defaults.curves,
        png=args.png or defaults.png,
        timing=args.timing or defaults.timing,
    )
    data_dir = args.data_dir or Path(f"data/processed/{args.dim}")
    if params.nproc > 1 and not under_torchrun():  # this process becomes the launcher of nproc workers
        launch_distributed(
            Path(__file__), sys.argv[1:] if argv is None else argv, data_dir, args.splits, params
        )
        return
    preprocessing = volume_section("slice_2d" if args.dim == "2d" else "stack_3d", args.params)
    run_training(data_dir, args.splits, params, shared_seed(args.params), outputs, preprocessing)


if __name__ == "__main__":
    sys.exit(run_stage(main))
