"""Offline ``dvc plots show`` / ``dvc plots diff``: an HTML page and PNGs that need no network.

    python -m metastases.compare.plots --out dvc_plots/                 # like `dvc plots show`
    python -m metastases.compare.plots main --out dvc_plots/            # like `dvc plots diff main`
    python -m metastases.compare.plots --dvc-template offline.html      # for `dvc plots ... --html-template`

``dvc_plots/index.html`` carries Vega, Vega-Lite and Vega-Embed inline (DVC's own page loads them from a
CDN, so it stays blank on an air-gapped network); ``dvc_plots/<plot id>.png`` are the same plots as pictures.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from metastases.atomic import write_text
from metastases.cli import configure_logging, run_stage
from metastases.compare import dvc_cli
from metastases.compare.render import offline_dvc_template, parse_plots, write_offline_html, write_pngs
from metastases.errors import UserError

log = logging.getLogger(__name__)


def write_offline_plots(revs: Sequence[str], out_dir: Path, repo: Path = Path(".")) -> Path:
    """Write ``out_dir/index.html`` and one PNG per plot for ``dvc plots show`` (no ``revs``) or
    ``dvc plots diff REVS``; return the HTML's path."""
    out_dir = Path(out_dir)
    doc = dvc_cli.plots_json(revs, repo, image_dir=(out_dir / ".dvc_images").resolve())
    plots = parse_plots(doc, root=repo)
    if not plots:  # `dvc plots show --json` outside a DVC repository also answers `{}`, exit status 0
        raise UserError(
            f"no plots found in {Path(repo).resolve()}: run this inside the DVC repository, after `dvc repro`"
            " (dvc.yaml needs a top-level `plots:` block)"
        )
    write_pngs(plots, out_dir)
    what = f"dvc plots diff {' '.join(revs)}" if revs else "dvc plots show"
    index = write_offline_html(out_dir / "index.html", plots, title=what)
    log.info("wrote %s and %d PNGs (offline, no remote scripts)", index, len(plots))
    return index


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metastases.compare.plots",
        description="Draw the pipeline's DVC plots into a self-contained HTML page and PNGs that need no "
        "network. No revision: the workspace (dvc plots show); revisions: dvc plots diff REV...",
    )
    parser.add_argument(
        "revs", nargs="*", help="revisions to compare, as for `dvc plots diff` (default: none)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("dvc_plots"), help="output folder (default: %(default)s)"
    )
    parser.add_argument("--repo", type=Path, default=Path("."), help="DVC repository (default: %(default)s)")
    parser.add_argument(
        "--dvc-template",
        type=Path,
        metavar="PATH",
        help="only write an offline HTML template for `dvc plots show/diff --html-template PATH`",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    if args.dvc_template is not None:
        write_text(args.dvc_template, offline_dvc_template())
        log.info(
            "wrote %s: dvc plots show draws offline (.dvc/config plots.html_template)", args.dvc_template
        )
        return
    write_offline_plots(args.revs, args.out, args.repo)


if __name__ == "__main__":
    sys.exit(run_stage(main))
