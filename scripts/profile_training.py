"""Where a training step's time goes, and how close it is to the machine: one default model on real arrays.

    python scripts/profile_training.py {2d,3d} [--arrays DIR] [--steps N] [--params params.yaml]
        [--set KEY=VALUE ...] [--trace FILE.json]

Times, per training sample, with params.yaml's ``train_<dim>`` settings on one torch thread (as a fold
process trains): reading a stored array, augmenting it, the forward pass, the backward pass and the
optimiser step, each measured alone over ``--steps`` batches of the first training patients. Counts the
model's floating-point operations for one sample forward + backward (``torch.utils.flop_counter``) and
measures, in the same process, a float32 matrix multiply on the same thread count, so the achieved
GFLOP/s of the training step stands beside what the core can do. ``--trace`` writes torch.profiler's
Chrome trace; the top operators by self CPU time are printed either way. Prints one JSON line last.
Nothing of the pipeline is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from metastases.models import build_model
from metastases.params import training_section
from metastases.training.dataset import Augmentation
from metastases.training.runtime import autocast, configure_torch, prepare_model, resolve_precision

PARTS = ("load", "augment", "forward", "backward", "optimizer")


def matmul_gflops(threads: int, size: int = 1024, repeats: int = 20) -> float:
    """The median float32 ``size`` x ``size`` matrix-multiply rate on ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def step_flops(model: nn.Module, batch: torch.Tensor, labels: torch.Tensor) -> int:
    """Floating-point operations of one forward + backward pass over ``batch``."""
    counter = FlopCounterMode(display=False)
    with counter:
        nn.functional.cross_entropy(model(batch), labels).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _median_ms(times: list[float], samples: int) -> float:
    return round(1000 * statistics.median(times) / samples, 2)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dim", choices=("2d", "3d"))
    parser.add_argument("--arrays", type=Path, help="default: data/processed/<dim>")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override train_<dim> keys")
    parser.add_argument("--trace", type=Path, help="write torch.profiler's Chrome trace here")
    args = parser.parse_args()
    params = training_section(args.dim, args.params)
    for item in args.set:
        key, _, value = item.partition("=")
        params = dataclasses.replace(params, **{key: type(getattr(params, key))(value)})
    arrays = args.arrays or Path(f"data/processed/{args.dim}")
    index = pd.read_csv(arrays / "index.csv", dtype={"patient": str})
    batch_size = params.batch_size
    patients = list(index["patient"][:batch_size])
    labels = torch.tensor([int(v) for v in index["label"][:batch_size]])
    device = torch.device("cpu")
    configure_torch(params.deterministic, params.threads, device)
    precision = resolve_precision(params.precision, device, f"train_{args.dim}.precision")
    shape = tuple(np.load(arrays / f"{patients[0]}.npy", mmap_mode="r").shape)
    model = prepare_model(build_model(params.model, shape), device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    augment = Augmentation.from_params(params)
    times: dict[str, list[float]] = {part: [] for part in PARTS}
    rng = np.random.default_rng(0)
    model.train()
    for step in range(args.steps + 1):  # the first step warms up and is not counted
        start = time.perf_counter()
        stored = [np.array(np.load(arrays / f"{p}.npy", mmap_mode="r")) for p in patients]
        loaded = time.perf_counter()
        batch = torch.stack([augment(sample, rng) for sample in stored])  # float32 conversion included
        augmented = time.perf_counter()
        with autocast(device, precision):
            loss = nn.functional.cross_entropy(model(batch).float(), labels)
        forwarded = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backwarded = time.perf_counter()
        optimizer.step()
        stepped = time.perf_counter()
        if step:
            ticks = (start, loaded, augmented, forwarded, backwarded, stepped)
            for part, begin, end in zip(PARTS, ticks[:-1], ticks[1:], strict=True):
                times[part].append(end - begin)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            batch = torch.stack([augment(sample, rng) for sample in stored])
            with autocast(device, precision):
                loss = nn.functional.cross_entropy(model(batch).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    if args.trace:
        prof.export_chrome_trace(str(args.trace))
    flops = step_flops(model, batch, labels) / batch_size
    parts = {f"{part}_ms": _median_ms(times[part], batch_size) for part in PARTS}
    compute_ms = parts["forward_ms"] + parts["backward_ms"]
    result = {
        "dim": args.dim,
        "model": params.model,
        "shape": list(batch.shape[1:]),
        "batch_size": batch_size,
        "threads": params.threads,
        "precision": precision,
        "per_sample": parts,
        "total_ms_per_sample": round(sum(parts.values()), 2),
        "gflop_per_sample": round(flops / 1e9, 3),
        "achieved_gflops": round(flops / compute_ms / 1e6, 1),
        "matmul_gflops": round(matmul_gflops(params.threads), 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
