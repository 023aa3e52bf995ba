"""A pull-request report comparing two revisions: params changed, metrics base/head/delta, plots of both.

    python -m metastases.compare.report --base main [--head workspace|REV] [--out report/]

writes ``report/report.md`` and one PNG per plot next to it, ready to paste into a pull request. Every
number comes from ``dvc params diff --json`` and ``dvc metrics diff --json`` and is printed the way
``dvc metrics diff`` prints it; every picture is the Vega-Lite spec of ``dvc plots diff --json`` rendered
offline, so it is what ``dvc plots diff`` draws. No network is used.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metastases.atomic import write_text
from metastases.cli import configure_logging, run_stage
from metastases.compare import dvc_cli
from metastases.compare.render import Plot, parse_plots, write_pngs

log = logging.getLogger(__name__)

PRECISION = 5
"""Digits after the decimal point, as ``dvc metrics diff`` rounds by default (its ``--precision``)."""

HEADLINE_METRICS = ("metrics/evaluate.json", "metrics/cv.json")
"""Metrics files listed first in a report (held-out, then cross-validated); the others follow by name.
DVC itself lists files in no stable order."""

MISSING = "-"
"""What ``dvc metrics diff`` prints for a value absent on one side."""


def format_value(value: Any, precision: int = PRECISION) -> str:
    """A metric or param as ``dvc metrics diff`` prints it: floats rounded to ``precision`` digits."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return str(round(value, precision))
    return str(value)


def file_rank(path: str) -> tuple[int, str]:
    """Sort key of a metrics file: :data:`HEADLINE_METRICS` in their order, then the rest by name."""
    normalised = Path(path).as_posix()
    rank = HEADLINE_METRICS.index(normalised) if normalised in HEADLINE_METRICS else len(HEADLINE_METRICS)
    return rank, normalised


@dataclass(frozen=True)
class DiffRow:
    """One row of a params or metrics diff, formatted. ``change`` is ``-`` where DVC has no delta."""

    path: str
    name: str
    old: str
    new: str
    change: str


def diff_rows(
    diff: Mapping[str, Mapping[str, Mapping[str, Any]]], precision: int = PRECISION
) -> list[DiffRow]:
    """Rows of a ``dvc metrics/params diff --json`` result: headline files first, then by name; keys
    sorted within a file as DVC sorts them."""
    rows = []
    for path in sorted(diff, key=file_rank):
        changes = diff[path]
        for name, change in sorted(changes.items()):
            rows.append(
                DiffRow(
                    path=path,
                    name=str(name),
                    old=format_value(change.get("old"), precision),
                    new=format_value(change.get("new"), precision),
                    change=format_value(change.get("diff"), precision),
                )
            )
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; numeric-looking columns are right-aligned by the reader."""
    lines = [
        "| " + " | ".join(_cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def params_section(diff: Mapping[str, Any], base: str, head: str) -> str:
    rows = diff_rows(diff)
    if not rows:
        return "## Params\n\nNo params changed.\n"
    table = markdown_table(["Path", "Param", base, head], [(r.path, r.name, r.old, r.new) for r in rows])
    return f"## Params that changed\n\n{table}\n"


def metrics_section(diff: Mapping[str, Any], base: str, head: str, all_metrics: bool) -> str:
    rows = diff_rows(diff)
    heading = "## Metrics" if all_metrics else "## Metrics that changed"
    if not rows:
        return f"{heading}\n\nNo metric changed.\n"
    table = markdown_table(
        ["Path", "Metric", base, head, "Change"], [(r.path, r.name, r.old, r.new, r.change) for r in rows]
    )
    return f"{heading}\n\n{table}\n"


def plots_section(pngs: Mapping[Plot, Path], out_dir: Path) -> str:
    if not pngs:
        return "## Plots\n\nNo plots: does dvc.yaml declare a top-level `plots:` block?\n"
    parts = ["## Plots\n"]
    for plot, path in pngs.items():
        revs = ", ".join(f"`{r}`" for r in plot.revisions)
        parts.append(
            f"### {plot.title}\n\nRevisions: {revs}\n\n![{plot.title}]({path.relative_to(out_dir)})\n"
        )
    return "\n".join(parts)


def write_report(
    base: str,
    head: str = dvc_cli.WORKSPACE,
    out_dir: Path = Path("report"),
    repo: Path = Path("."),
    *,
    all_metrics: bool = False,
) -> Path:
    """Write ``out_dir/report.md`` (and its PNGs) comparing revision ``base`` to ``head``; return its path.

    ``head`` is a Git revision, an experiment name, or ``workspace`` (the working tree).
    """
    out_dir = Path(out_dir)
    params = dvc_cli.params_diff(base, head, repo)
    metrics = dvc_cli.metrics_diff(base, head, repo, all_=all_metrics)
    image_dir = out_dir / ".dvc_images"
    doc = dvc_cli.plots_json(dvc_cli.revisions(base, head), repo, image_dir=image_dir.resolve())
    plots = parse_plots(doc, root=repo)
    pngs = write_pngs(plots, out_dir)

    command = f"python -m metastases.compare.report --base {base} --head {head}"
    text = "\n".join(
        [
            f"# Comparison: `{base}` → `{head}`\n",
            f"Written by `{command}` from `dvc params diff`, `dvc metrics diff` and `dvc plots diff` "
            f"(numbers rounded to {PRECISION} digits as DVC prints them; pictures rendered offline from "
            "DVC's own plot specs).\n",
            params_section(params, base, head),
            metrics_section(metrics, base, head, all_metrics),
            plots_section(pngs, out_dir),
        ]
    )
    report = out_dir / "report.md"
    write_text(report, text)
    log.info("wrote %s with %d plots", report, len(pngs))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metastases.compare.report",
        description="Write a Markdown report (params changed, metrics base/head/delta, plots of both "
        "revisions as PNG) comparing two revisions of this DVC pipeline, for a pull request. No network.",
    )
    parser.add_argument("--base", required=True, help="base revision: branch, tag, commit or experiment name")
    parser.add_argument(
        "--head",
        default=dvc_cli.WORKSPACE,
        help="head revision, or 'workspace' for the working tree (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("report"), help="output folder (default: %(default)s)"
    )
    parser.add_argument("--repo", type=Path, default=Path("."), help="DVC repository (default: %(default)s)")
    parser.add_argument(
        "--all", action="store_true", help="list unchanged metrics too (dvc metrics diff --all)"
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    write_report(args.base, args.head, args.out, args.repo, all_metrics=args.all)


if __name__ == "__main__":
    sys.exit(run_stage(main))
