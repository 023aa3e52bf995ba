"""What every stage script shares: logging set-up and one clear line (no traceback) for user errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from metastases.errors import ParamsError, UserError
from metastases.processes import children_end_with_me

log = logging.getLogger("metastases")


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors raise :class:`ParamsError`: :func:`run_stage` prints one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ParamsError(f"{message} (see --help)")


def stage_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every stage has (``--params``, ``--verbose``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def add_models_arguments(parser: argparse.ArgumentParser, *, arrays: bool = False) -> None:
    """``--dims``, ``--model-2d``, ``--model-3d`` (the fold-model checkpoints) for the stages that use
    the trained models; with ``arrays``, also ``--data-2d`` and ``--data-3d``."""
    parser.add_argument("--dims", nargs="+", choices=("2d", "3d"), default=["2d", "3d"], help="models")
    parser.add_argument("--model-2d", type=Path, default=Path("models/2d.pt"), help="2D fold models")
    parser.add_argument("--model-3d", type=Path, default=Path("models/3d.pt"), help="3D fold models")
    if arrays:
        parser.add_argument("--data-2d", type=Path, default=Path("data/processed/2d"), help="2D arrays")
        parser.add_argument("--data-3d", type=Path, default=Path("data/processed/3d"), help="3D arrays")


def chosen(args: argparse.Namespace, option: str) -> dict[str, Path]:
    """``{dim: path}`` of ``--<option>-2d``/``--<option>-3d`` for the dimensions ``--dims`` chose."""
    return {dim: getattr(args, f"{option}_{dim}") for dim in args.dims}


def run_stage(main: Callable[[list[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Run a stage's ``main``; a :class:`UserError` becomes one ``error:`` line and exit status 2.

    SIGTERM (``kill``, ``timeout``) ends the stage's worker processes with it (exit status 143).

    ``main`` may take ``list[str] | None`` or any wider type (``Sequence[str] | None``): it gets a list.
    """
    try:
        with children_end_with_me():
            main(None if argv is None else list(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
