"""Training on N processes under ``torchrun`` (DistributedDataParallel), the single-process batches kept.

``train_<dim>.nproc: N`` > 1 makes the stage script re-run itself under
``python -m torch.distributed.run --standalone --nproc_per_node N``; each worker joins a process group
(gloo on the CPU, NCCL on CUDA, one GPU per worker) and every fold model is trained by all N workers
together, one fold after another (``parallel_folds`` does not apply under DDP).

The batches are those of the single-process run: each rank reproduces the seeded order of the
single-process loader and takes its share of every batch (:class:`RankBatches`), and the loss is scaled so
that DistributedDataParallel's gradient average equals the gradient of the whole batch's mean loss. What
still differs from one process on the CPU: batch normalisation normalises each rank's share with that
share's statistics (SyncBatchNorm, used on CUDA, needs a GPU; the running statistics kept are rank 0's),
dropout draws other masks, and floating-point sums run in another order. Validation is scored in shards
and gathered; only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from metastases.errors import ParamsError, UserError

log = logging.getLogger(__name__)

IGNORE_LABEL = -100
"""Label of a stand-in sample (cross-entropy's ``ignore_index``): a rank whose share of a batch is empty
still steps with the others, on a sample that weighs nothing."""

TIMEOUT = timedelta(minutes=30)
"""How long a rank waits for the others at a collective before failing (a dead worker ends the run)."""


def check_nproc(nproc: int, device: torch.device, section: str) -> None:
    """Refuse more worker processes than GPUs on CUDA; on the CPU, more than the cores only warns."""
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise ParamsError(
                f"{section}.nproc: {nproc} processes but {gpus} CUDA device(s); lower nproc to {gpus} or less"
            )
    elif nproc > (os.cpu_count() or 1):
        log.warning("%s.nproc %d exceeds the %d CPU cores: the workers will share them", section, nproc,
                    os.cpu_count() or 1)  # fmt: skip


def launch(script: Path, argv: Sequence[str], nproc: int) -> None:
    """Run ``script argv`` as ``nproc`` torchrun workers on this machine and wait for them.

    A worker that fails (an error, killed, out of memory) ends them all; that is one ``UserError`` here,
    and no output was written (rank 0 writes only after every fold model is trained, atomically).
    """
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        str(script), *argv,
    ]  # fmt: skip
    log.info("training on %d processes: %s", nproc, " ".join(command[1:]))
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise UserError(
            f"distributed training on {nproc} processes failed (torchrun exit status {result.returncode}; "
            "the failing worker's message is above); nothing was written"
        )


@dataclass(frozen=True)
class Group:
    """This worker's place in the process group."""

    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of ``values`` over the ranks (a new tensor; ``values`` is left as is)."""
        total = values.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def gather(self, item: object) -> list[object]:
        """Every rank's ``item`` (picklable), in rank order, on every rank."""
        items: list[object] = [None] * self.world
        dist.all_gather_object(items, item)
        return items

    def barrier(self) -> None:
        dist.barrier()


def worker_device(device: torch.device) -> torch.device:
    """The device of this torchrun worker: on CUDA the GPU numbered by its local rank."""
    if device.type != "cuda":
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def start_group(device: torch.device) -> Group:
    """Join the torchrun process group: gloo on the CPU, NCCL on CUDA."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    group = Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if not group.is_main:  # one log, rank 0's; the other ranks only report errors
        logging.getLogger("metastases").setLevel(logging.ERROR)
    log.info("rank %d of %d (%s backend, device %s)", group.rank, group.world, backend, device)
    return group


def stop_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def current_group() -> Group | None:
    """The process group of a multi-process run, or ``None`` in a plain (single) process."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class _Indices(Dataset[int]):
    """The sample indices ``0 .. samples - 1`` (what :class:`RankBatches` shuffles)."""

    def __init__(self, samples: int) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> int:
        return index


class RankBatches(Sampler[list[int]]):
    """This rank's share of each batch of the single-process loader, in its seeded order.

    The single-process run draws its order from a ``DataLoader(shuffle=True)`` seeded with ``seed``; an
    identical loader over the sample indices replays it, epoch after epoch (each ``iter`` is the next
    epoch, as for the real loader). Every batch is cut into ``world`` contiguous shares, rank 0's first, so
    rank 0 always gets a sample; a rank whose share is empty gets the batch's first sample marked as a
    stand-in (``-1 - index``, see :class:`MarkedSamples`) so that every rank takes the same steps.
    """

    def __init__(self, samples: int, batch_size: int, *, seed: int, rank: int, world: int) -> None:
        self.order: DataLoader[int] = DataLoader(
            _Indices(samples),
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.order:
            share = np.array_split(batch.numpy(), self.world)[self.rank].tolist()
            yield share if share else [-1 - int(batch[0])]


class MarkedSamples(Dataset[tuple[torch.Tensor, int]]):
    """``dataset`` where index ``-1 - i`` is sample ``i`` as a stand-in labelled :data:`IGNORE_LABEL`."""

    def __init__(self, dataset: Dataset[tuple[torch.Tensor, int]]) -> None:
        self.dataset = dataset

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            sample, _ = self.dataset[-1 - index]
            return sample, IGNORE_LABEL
        return self.dataset[index]


def wrap_model(model: nn.Module, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """``(network, ddp)``: DistributedDataParallel around ``model`` (already on ``device``; rank 0's
    weights are broadcast) and the network it trains. On CUDA batch normalisation is synchronised over the
    processes (statistics of the whole batch, as in one process); PyTorch's SyncBatchNorm needs a GPU, so
    on the CPU each process normalises with its own share's statistics."""
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model, nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return model, nn.parallel.DistributedDataParallel(model)


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics) before it scores anything."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
