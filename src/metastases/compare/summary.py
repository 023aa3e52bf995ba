"""One table of both models' numbers, within 120 columns: what ``make metrics`` prints.

    python -m metastases.compare.summary [--metrics-dir metrics]

Reads the stages' full metrics (``metrics/details/*.json``; a run from before they were split off has
them in ``metrics/*.json``): per model the out-of-fold AUC, the held-out AUC with its confidence
interval, sensitivity and specificity at the threshold chosen out of fold, where the evidence points
(localisation, out of fold / held out) and how many fold models learned; below, the cohort.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metastases.cli import run_stage
from metastases.errors import UserError
from metastases.metrics_file import details_path

COLUMNS = ("model", "out-of-fold AUC", "held-out AUC [CI]", "sens / spec", "threshold", "localisation",
           "learned")  # fmt: skip


def read_metrics(metrics_dir: Path, name: str) -> dict[str, Any]:
    """``details/<name>.json``, else ``<name>.json`` (a run from before the split); {} when neither."""
    headline = metrics_dir / f"{name}.json"
    for path in (details_path(headline), headline):
        if path.is_file():
            try:
                loaded = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: not JSON ({exc.msg}); rerun its stage (dvc repro)") from None
            return loaded if isinstance(loaded, dict) else {}
    return {}


def _number(value: Any, digits: int = 3) -> str:
    return "-" if not isinstance(value, (int, float)) or isinstance(value, bool) else f"{value:.{digits}f}"


def model_row(dim: str, train: dict[str, Any], cv: dict[str, Any], test: dict[str, Any]) -> list[str]:
    """One model's cells (``-`` for what its run did not measure)."""
    at = test.get("at_cv_threshold", {})
    interval = (
        f"{_number(test.get('auc'))} [{_number(test.get('auc_ci_low'))}, {_number(test.get('auc_ci_high'))}]"
    )
    located = f"{_number(cv.get('localisation'), 2)} / {_number(test.get('localisation'), 2)}"
    learned = f"{train.get('folds_learned', '-')} of {train.get('folds', '-')}"
    return [f"{dim.upper()} {train.get('model', '')}".strip(), _number(cv.get("oof_auc")), interval,
            f"{_number(at.get('sensitivity'), 2)} / {_number(at.get('specificity'), 2)}",
            _number(cv.get("threshold")), located, learned]  # fmt: skip


def summary_table(metrics_dir: Path) -> str:
    """The table as text: aligned columns, then one line on the cohort."""
    cv, test = read_metrics(metrics_dir, "cv"), read_metrics(metrics_dir, "evaluate")
    dims = [dim for dim in ("2d", "3d") if dim in cv or dim in test]
    if not dims:
        raise UserError(f"no metrics under {metrics_dir}: run the pipeline first (make run)")
    rows = [list(COLUMNS)] + [
        model_row(dim, read_metrics(metrics_dir, f"train_{dim}"), cv.get(dim, {}), test.get(dim, {}))
        for dim in dims
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    ingest, split = read_metrics(metrics_dir, "ingest"), read_metrics(metrics_dir, "split")
    lines += [
        "",
        f"cohort: {ingest.get('patients_ok', '-')} patients ingested, {ingest.get('patients_excluded', '-')} "
        f"excluded; {split.get('train_patients', '-')} for training ({split.get('folds', '-')} folds), "
        f"{split.get('test_patients', '-')} held out",
        "sens / spec at the threshold chosen out of fold; localisation: out of fold / held out",
    ]
    return "\n".join(lines + external_lines(read_metrics(metrics_dir, "external"), dims))


def external_lines(external: dict[str, Any], dims: Sequence[str]) -> list[str]:
    """The second site in one line per model; nothing without one (or before external validation)."""
    if not external.get("patients"):
        return []
    calibration = external.get("calibration_patients", 0)
    lines = [
        "",
        f"external site: {external['patients']} patients ({calibration} of them choose the adapted "
        "threshold; sens / spec on the others)",
    ]
    for dim in dims:
        site = external.get(dim, {})
        before, after = site.get("at_cv_threshold", {}), site.get("adapted") or {}
        interval = f"[{_number(site.get('auc_ci_low'))}, {_number(site.get('auc_ci_high'))}]"
        lines.append(
            f"  {dim.upper()}: AUC {_number(site.get('auc'))} {interval}; sens / spec "
            f"{_number(before.get('sensitivity'), 2)} / {_number(before.get('specificity'), 2)} at the "
            f"out-of-fold threshold, {_number(after.get('sensitivity'), 2)} / "
            f"{_number(after.get('specificity'), 2)} adapted"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics-dir", type=Path, default=Path("metrics"), help="(default: %(default)s)")
    args = parser.parse_args(argv)
    print(summary_table(args.metrics_dir))


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
