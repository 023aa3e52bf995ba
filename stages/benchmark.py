"""The benchmark's stages (benchmark/dvc.yaml): subsets, reference, run, table.

    subsets    check the benchmark's params; write the nested training subsets of the learning curve
    reference  the histogram logistic regression on every training patient
    run        one model, recipe, training seed and number of training patients -> one JSON
    table      every run -> the benchmark table, the learning curve (CSV, PNG), the headline metrics

Pipeline settings (ingest, split, arrays, training, evaluate) come from the main params.yaml (--params);
the benchmark's own (cohort, curve, baselines) from benchmark/params.yaml (--benchmark-params).
"""

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from metastases.atomic import write_csv, write_json, write_text
from metastases.benchmark import (
    RECIPES,
    aggregate,
    histogram_reference,
    markdown_table,
    plot_learning_curve,
    row_params,
    run_benchmark,
    training_subset,
)
from metastases.cli import OneLineParser, configure_logging, run_stage
from metastases.errors import ParamsError, UserError
from metastases.lesion_truth import read_lesions
from metastases.models import check_model, model_dim
from metastases.params import EvaluateParams, SplitParams, section, shared_seed, training_section
from metastases.training.inputs import load_cohort


def benchmark_params(path: Path) -> dict:
    """benchmark/params.yaml, checked: every model known, every subset a whole number."""
    params = yaml.safe_load(path.read_text()) or {}
    for model in params.get("baselines", {}).get("models", []):
        try:
            model_dim(model)
        except ParamsError as exc:
            raise ParamsError(f"baselines.models: {exc}") from None
    for recipe in params.get("baselines", {}).get("recipes", []):
        if recipe not in RECIPES:
            raise ParamsError(f"baselines.recipes: {recipe!r} is not one of {', '.join(RECIPES)}")
    return params


def subsets(args) -> None:
    own = benchmark_params(args.benchmark_params)
    splits = pd.read_csv(args.splits, dtype={"patient": str})
    folds = section(SplitParams, "split", args.params).folds
    written = {}
    for patients in own["curve"]["patients"]:
        try:
            written[patients] = training_subset(splits, int(patients), folds, shared_seed(args.params))
        except ValueError:
            raise ParamsError(f"curve.patients: {patients!r} is not a whole number") from None
        except UserError as exc:
            raise ParamsError(f"curve.patients: {exc}") from None
    for patients, subset in written.items():  # all checked before one is written
        write_csv(args.out_dir / f"n{patients}.csv", subset)


def reference(args) -> None:
    cohort = load_cohort(args.data, args.splits, "3d")
    evaluate = section(EvaluateParams, "evaluate", args.params)
    write_json(args.out, histogram_reference(cohort, evaluate, shared_seed(args.params)))


def run(args) -> None:
    dim = model_dim(args.model) if args.model else args.dim
    base = training_section(dim, args.params)
    model = args.model or base.model
    check_model(model, dim, base.section_name)
    params = row_params(base, model, args.recipe)
    cohort = load_cohort(args.data / dim, args.splits, dim)
    evaluate = section(EvaluateParams, "evaluate", args.params)
    lesions = read_lesions(args.raw_dir)
    record = run_benchmark(cohort, params, recipe=args.recipe, seed=args.seed, evaluate=evaluate,
                           bootstrap_seed=shared_seed(args.params), lesions=lesions)  # fmt: skip
    write_json(args.out, record | {"curve": args.model is None})


def table(args) -> None:
    files = [p for path in args.runs for p in ([path] if path.is_file() else sorted(path.glob("*.json")))]
    runs = [json.loads(p.read_text()) for p in files]
    if not runs:
        raise ParamsError(f"no runs under {', '.join(map(str, args.runs))}: run the benchmark's run stages")
    benchmark, curve = aggregate(runs)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    date = time.strftime("%Y-%m-%d")
    write_text(args.markdown, markdown_table(benchmark, curve, commit=commit or "unknown", date=date))
    for dim in ("2d", "3d"):
        rows = {run["row"] for run in runs if run.get("curve") and run.get("dim") == dim}
        part = curve[curve["row"].isin(rows)]
        if len(part):
            write_csv(args.curve / f"{dim}.csv", part.drop(columns="row"))
    plot_learning_curve(curve, args.png)
    names = {row: row.replace(" (study recipe)", ":study").split(" ")[0] for row in curve["row"]}
    headline = ("oof_auc_mean", "test_auc_mean", "patients")
    write_json(args.metrics, {names[r["row"]]: {k: r[k] for k in headline} for _, r in benchmark.iterrows()})
    write_json(args.curve_metrics, {
        names[row]: {f"n{r['patients']}": {"oof_auc": r["oof_auc_mean"], "test_auc": r["test_auc_mean"]}
                     for _, r in rows.iterrows()}
        for row, rows in curve.groupby("row", sort=False)
    })  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("../params.yaml"), help="the pipeline's params")
    parser.add_argument("--benchmark-params", type=Path, default=Path("params.yaml"), help="the benchmark's")
    parser.add_argument("--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("subsets")
    one.add_argument("--splits", type=Path, required=True)
    one.add_argument("--out-dir", type=Path, required=True)
    one = commands.add_parser("reference")
    for option in ("--data", "--splits", "--out"):
        one.add_argument(option, type=Path, required=True)
    one = commands.add_parser("run")
    which = one.add_mutually_exclusive_group(required=True)
    which.add_argument("--dim", choices=("2d", "3d"), help="the default model of train_<dim>")
    which.add_argument("--model", help="another model of the registry (its train_<dim> for the rest)")
    one.add_argument("--recipe", choices=RECIPES, default="params")
    one.add_argument("--seed", type=int, required=True)
    for option in ("--data", "--splits", "--raw-dir", "--out"):
        one.add_argument(option, type=Path, required=True)
    one = commands.add_parser("table")
    one.add_argument("--runs", type=Path, nargs="+", required=True)
    for option in ("--metrics", "--curve-metrics", "--markdown", "--curve", "--png"):
        one.add_argument(option, type=Path, required=True)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    {"subsets": subsets, "reference": reference, "run": run, "table": table}[args.command](args)


if __name__ == "__main__":
    sys.exit(run_stage(main))
