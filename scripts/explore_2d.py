"""Cross-validate a variant of the 2D slice model on the pipeline's arrays (the README's 2D exploration).

    python scripts/explore_2d.py [--arrays data/processed/2d] [--splits data/splits.csv] [--seeds 42 43]
        [--channels 16 32 64] [--strides 2 2 2] [--position] [--set KEY=VALUE ...] [--jobs 2]

Every fold model trains on the other training folds with params.yaml's ``train_2d`` settings, the model
swapped for the variant (``SliceMIL`` with ``--channels``/``--strides``; ``--position`` adds the slice's
position in the stack, -1 at the bottom to 1 at the top, as a fourth input channel of every slice), any
``--set`` applied (``lr=0.001``, ``rotate_degrees=0``, ``epochs=80``), through
``metastases.training.loop.fit``, the function cross-validation trains with, with the seed of the fold's
first attempt. No restarts: a variant is judged as it trains once. Prints one JSON line per training
seed: out-of-fold AUC, fold AUCs, last-epoch training losses, seconds. Writes nothing. The test split is
never used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from metastases import models
from metastases.models.layers import conv_stages
from metastases.models.slice_mil import SliceMIL
from metastases.params import TrainingParams, training_section
from metastases.training.folds import fold_seed
from metastases.training.inputs import load_cohort
from metastases.training.loop import fit
from metastases.training.runtime import configure_torch

VARIANT = "explore2d"


class PositionSliceMIL(SliceMIL):
    """:class:`SliceMIL` whose slice instances carry their position in the stack as an extra channel."""

    def __init__(
        self, *, channels: tuple[int, ...], strides: tuple[int, ...], in_channels: int, classes: int
    ) -> None:
        super().__init__(in_channels=in_channels, num_classes=classes, channels=channels, strides=strides)
        self.encoder = conv_stages(2, self.sequences + 1, channels, list(strides))

    def instances(self, x: torch.Tensor) -> torch.Tensor:
        slices = super().instances(x)  # [B * depth, sequences, S, S]
        position = torch.linspace(-1.0, 1.0, self.depth, dtype=slices.dtype, device=slices.device)
        plane = position.repeat(x.shape[0]).reshape(-1, 1, 1, 1).expand(-1, 1, *slices.shape[2:])
        return torch.cat([slices, plane], dim=1)


def register(channels: tuple[int, ...], strides: tuple[int, ...], position: bool) -> None:
    """Register the variant under :data:`VARIANT` (inherited by the forked fold processes)."""

    def build(shape: tuple[int, ...], classes: int) -> torch.nn.Module:
        if position:
            return PositionSliceMIL(channels=channels, strides=strides, in_channels=shape[0], classes=classes)
        return SliceMIL(in_channels=shape[0], num_classes=classes, channels=channels, strides=strides)

    models.MODELS[VARIANT] = models.ModelSpec("2d", build, "exploratory 2D slice model")


def parse_setting(text: str, base: TrainingParams) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    if not hasattr(base, key):
        raise SystemExit(f"error: --set {text}: train_2d has no setting {key!r}")
    current = getattr(base, key)
    if isinstance(current, bool):
        return key, value.lower() in ("1", "true")
    try:
        return key, type(current)(value)
    except ValueError:
        raise SystemExit(f"error: --set {text}: not a valid {type(current).__name__}") from None


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--arrays", type=Path, default=Path("data/processed/2d"))
    parser.add_argument("--splits", type=Path, default=Path("data/splits.csv"))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--strides", type=int, nargs="+", default=[2, 2, 2])
    parser.add_argument("--position", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--jobs", type=int, default=2, help="fold models at once, one process each")
    args = parser.parse_args()
    if len(args.channels) != len(args.strides):
        parser.error("--channels and --strides need one entry per stage")
    base = training_section("2d", args.params)
    settings = dict(parse_setting(text, base) for text in args.set)
    params = dataclasses.replace(base, **settings, model=VARIANT, threads=1, num_workers=0, device="cpu")
    register(tuple(args.channels), tuple(args.strides), args.position)
    cohort = load_cohort(args.arrays, args.splits, "2d")
    shape = cohort.sample_shape(cohort.part("train"))

    def run(task: tuple[int, int]) -> dict:
        seed, fold = task
        configure_torch(True, 1, torch.device("cpu"))
        train, held = cohort.part("train", exclude=[fold]), cohort.part("train", folds=[fold])
        start = time.perf_counter()
        result = fit(args.arrays, train, held, params, fold_seed(seed, fold, 0),
                     torch.device("cpu"), shape, f"seed {seed} fold {fold}")  # fmt: skip
        return {"seed": seed, "fold": fold, "labels": held["label"].to_numpy(), "scores": result.val_scores,
                "loss": result.epochs[-1].train_loss, "auc": result.epochs[-1].val_auc,
                "seconds": time.perf_counter() - start}  # fmt: skip

    tasks = [(seed, fold) for seed in args.seeds for fold in cohort.folds]
    global _RUN  # the forked workers call the closure through a module-level name
    _RUN = run
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        done = list(pool.map(_call, tasks))
    for seed in args.seeds:
        runs = [r for r in done if r["seed"] == seed]
        labels = np.concatenate([r["labels"] for r in runs])
        scores = np.concatenate([r["scores"] for r in runs])
        print(json.dumps({
            "seed": seed, "channels": args.channels, "strides": args.strides, "position": args.position,
            "settings": settings, "oof_auc": round(float(roc_auc_score(labels, scores)), 3),
            "fold_auc": [round(r["auc"], 3) for r in runs], "train_loss": [round(r["loss"], 3) for r in runs],
            "seconds": round(sum(r["seconds"] for r in runs)),
        }))  # fmt: skip


_RUN = None


def _call(task: tuple[int, int]) -> dict:
    assert _RUN is not None
    return _RUN(task)


if __name__ == "__main__":
    main()
