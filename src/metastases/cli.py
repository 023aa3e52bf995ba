"""What every stage script shares: logging set-up and one clear line (no traceback) for user errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from metastases.errors import UserError

log = logging.getLogger("metastases")


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def stage_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every stage has (``--params``, ``--verbose``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def run_stage(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Run a stage's ``main``; a :class:`UserError` becomes one ``error:`` line and exit status 2."""
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
