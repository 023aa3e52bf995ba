"""Shared body of the slice-2d and stack-3d stages: they differ only in dim, params section and paths."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from metastases.arrays import build_arrays
from metastases.cli import configure_logging, stage_parser
from metastases.montage import sample_montage
from metastases.params import cpu_workers, volume_section

log = logging.getLogger("metastases.stage")


def main(dim: str, section_name: str, description: str, argv: Sequence[str] | None) -> None:
    parser = stage_parser(description)
    parser.add_argument("--interim-dir", type=Path, default=Path("data/interim"), help="ingest output")
    parser.add_argument("--out-dir", type=Path, default=Path(f"data/processed/{dim}"), help="arrays out")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="parallel patients (default 0: one per CPU core; no effect on output)",
    )
    if dim == "2d":
        parser.add_argument(
            "--samples-png", type=Path, default=Path("plots/samples.png"), help="data example"
        )
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    params = volume_section(section_name, args.params)
    index = build_arrays(
        args.interim_dir, args.out_dir, params, dim, workers=cpu_workers(max(0, args.workers))
    )
    if dim == "2d":
        sample_montage(args.out_dir, index, args.samples_png)
        log.info("data example written to %s", args.samples_png)
