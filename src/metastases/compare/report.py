"""A pull-request report comparing two revisions: is the AUC change real, params changed, metrics
base/head/delta, plots of both.

    python -m metastases.compare.report --base main [--head workspace|REV] [--out report/]

writes ``report/report.md`` and one PNG per plot next to it, ready to paste into a pull request. It
opens with a paired comparison of the two revisions' predictions on the same patients (DeLong's test of
the AUC difference, out-of-fold and held-out, per model: "better", "worse" or "within noise"). The
params and metrics tables come from ``dvc params diff --json`` and ``dvc metrics diff --json`` and are
printed the way ``dvc metrics diff`` prints them; every picture is the Vega-Lite spec of
``dvc plots diff --json`` rendered offline, so it is what ``dvc plots diff`` draws. No network is used.
"""

from __future__ import annotations

import argparse
import io
import logging
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from metastases.atomic import write_bytes, write_text
from metastases.cli import configure_logging, run_stage
from metastases.compare import dvc_cli
from metastases.compare.render import Plot, parse_plots, write_pngs
from metastases.errors import UserError
from metastases.evaluation.paired import PairedAucTest, delong_paired_test

log = logging.getLogger(__name__)

PRECISION = 5
"""Digits after the decimal point, as ``dvc metrics diff`` rounds by default (its ``--precision``)."""

HEADLINE_METRICS = ("metrics/evaluate.json", "metrics/cv.json", "metrics/external.json")
"""Metrics files listed first in a report (held-out, then cross-validated); the others follow by name.
DVC itself lists files in no stable order."""

MISSING = "-"
"""What ``dvc metrics diff`` prints for a value absent on one side."""

PREDICTION_FILES = (
    ("out-of-fold", "metrics/cv_predictions.csv"),
    ("held-out", "metrics/predictions.csv"),
    ("external", "metrics/external_predictions.csv"),
)
"""The per-patient predictions compared pairwise, in report order: (kind, path in the repository)."""
OPTIONAL_PREDICTIONS = frozenset({"external"})
"""Kinds a revision may lack (a run without a second site, a commit from before external validation):
noted in the report, not an error."""

PREDICTION_COLUMNS = ("patient", "label", "score", "model")
"""Columns a predictions file must have; others (``fold``, ...) are ignored."""

CONFIDENCE = 0.95
"""Coverage of the paired intervals; a verdict other than "within noise" means p < 1 - CONFIDENCE."""


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


def metrics_diff(base: str, head: str, repo: Path, *, all_metrics: bool) -> dict[str, dict[str, Any]]:
    """The declared (headline) metrics and every number of ``metrics/details/`` of both revisions.

    A revision from before the details were split off kept every number in the headline file itself:
    a key of ``metrics/details/<name>`` absent there at the base is compared with the base's
    ``metrics/<name>``, so the report compares across the split instead of listing every key twice.
    """
    diff = dvc_cli.metrics_diff(base, head, repo, all_=True)
    details = sorted(p.relative_to(repo).as_posix() for p in (repo / "metrics" / "details").glob("*.json"))
    if details:
        for path, keys in dvc_cli.metrics_diff(base, head, repo, all_=True, targets=details).items():
            headline = diff.get(f"metrics/{Path(path).name}", {})  # the inverse of details_path
            for name, change in keys.items():
                before = headline.get(name)
                if change.get("old") is None and before is not None and before.get("old") is not None:
                    keys[name] = _change(before["old"], change.get("new"))
                    if before.get("new") is None:
                        del headline[name]  # moved from the headline file to the details
            diff[path] = keys
    changed = {
        path: {
            name: change
            for name, change in keys.items()
            if all_metrics or change.get("old") != change.get("new")
        }
        for path, keys in diff.items()
    }
    return {path: keys for path, keys in changed.items() if keys}


def _change(old: Any, new: Any) -> dict[str, Any]:
    """One entry as ``dvc metrics diff --json`` writes it: a ``diff`` only between two numbers."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    return {"old": old, "new": new, **({"diff": new - old} if numbers else {})}


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


# --- paired comparison of the predictions ----------------------------------------------------------


def _git(args: Sequence[str], repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)


def resolve_revision(rev: str, repo: Path = Path(".")) -> str:
    """The Git object name of ``rev``: a branch, tag or commit, or a DVC experiment's name (its ref
    under ``refs/exps``). An unknown revision raises :class:`UserError`."""
    if _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], repo).returncode == 0:
        return rev
    refs = _git(["for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout.split()
    matches = [ref for ref in refs if ref.rsplit("/", 1)[-1] == rev]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(f"experiment name {rev!r} is ambiguous ({len(matches)} experiments): use its commit")
    raise UserError(
        f"unknown revision {rev!r} in {Path(repo).resolve()}: not a branch, tag, commit or experiment"
    )


def read_at_revision(rev: str, path: str, repo: Path = Path(".")) -> str | None:
    """The text of ``path`` (relative to ``repo``) at Git revision ``rev``, or in the working tree if
    ``rev`` is ``workspace``; None if the file does not exist there."""
    if rev == dvc_cli.WORKSPACE:
        file = Path(repo) / path
        return file.read_text() if file.is_file() else None
    done = _git(["show", f"{resolve_revision(rev, repo)}:./{path}"], repo)
    return done.stdout if done.returncode == 0 else None


def read_bytes_at_revision(rev: str, path: str, repo: Path = Path(".")) -> bytes | None:
    """Like :func:`read_at_revision`, for binary files (pictures)."""
    if rev == dvc_cli.WORKSPACE:
        file = Path(repo) / path
        return file.read_bytes() if file.is_file() else None
    command = ["git", "show", f"{resolve_revision(rev, repo)}:./{path}"]
    done = subprocess.run(command, cwd=repo, capture_output=True, check=False)
    return done.stdout if done.returncode == 0 else None


EVIDENCE_MONTAGE = "plots/evidence.png"


def evidence_section(base: str, head: str, out_dir: Path, repo: Path = Path(".")) -> str:
    """Both revisions' montage of where the models looked on the held-out patients, one under the other."""
    parts = [
        "## Where the models looked\n",
        f"`{EVIDENCE_MONTAGE}`: T1+C of every held-out patient at each model's strongest evidence (+), "
        "grouped "
        "true positives, false negatives, false positives, true negatives; green circles are the true "
        "metastases when the cohort knows them.\n",
    ]
    for label, rev in (("base", base), ("head", head)):
        data = read_bytes_at_revision(rev, EVIDENCE_MONTAGE, repo)
        if data is None:
            parts.append(f"### {label} `{rev}`\n\nNo evidence montage at this revision.\n")
            continue
        name = f"evidence_{label}.png"
        write_bytes(out_dir / name, data)
        parts.append(f"### {label} `{rev}`\n\n![evidence, {label}]({name})\n")
    return "\n".join(parts)


def parse_predictions(text: str, where: str) -> pd.DataFrame:
    """A predictions CSV (``patient,label,score,model``, extra columns dropped); ``where`` names it in
    errors."""
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={"patient": str, "model": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{where} is not a readable CSV file: {exc}") from exc
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(
            f"{where} lacks the column(s) {', '.join(missing)}; expected {','.join(PREDICTION_COLUMNS)}"
        )
    frame = frame[list(PREDICTION_COLUMNS)]
    if frame["label"].isna().any() or not frame["label"].isin([0, 1]).all():
        raise UserError(f"{where}: labels must be 0 or 1")
    if frame["score"].isna().any():
        raise UserError(f"{where}: some scores are empty")
    return frame.astype({"label": int, "score": float})


def load_predictions(rev: str, path: str, repo: Path = Path(".")) -> pd.DataFrame | None:
    """The predictions file ``path`` at ``rev`` (see :func:`read_at_revision`), or None if absent."""
    text = read_at_revision(rev, path, repo)
    where = f"{path} in the workspace" if rev == dvc_cli.WORKSPACE else f"{path} at revision {rev}"
    return None if text is None else parse_predictions(text, where)


def missing_predictions_error(rev: str, path: str) -> UserError:
    if rev == dvc_cli.WORKSPACE:
        return UserError(f"{path} not found in the workspace: run dvc repro to write it")
    return UserError(f"{path} not found at revision {rev}: run dvc repro there and commit its metrics")


@dataclass(frozen=True)
class PairedRow:
    """One model and one kind of predictions compared pairwise. ``test`` is None where no test was
    possible and ``reason`` then says why (``"not comparable: different patients"``, ...)."""

    model: str
    kind: str
    patients: int
    positives: int
    test: PairedAucTest | None = None
    reason: str = ""

    @property
    def verdict(self) -> str:
        if self.test is None:
            return self.reason
        note = " (variance estimate 0)" if self.test.note else ""
        return self.test.verdict + note


def pair_predictions(base: pd.DataFrame, head: pd.DataFrame, kind: str) -> list[PairedRow]:
    """Per model (sorted), DeLong's test of head's AUC minus base's on the patients both scored.

    A model must have the same patients with the same labels at both revisions, each once; otherwise its
    row says why it is not comparable instead of a number.
    """
    rows = []
    for model in sorted(set(base["model"]) | set(head["model"])):
        old = base[base["model"] == model]
        new = head[head["model"] == model]
        if old.empty or new.empty:
            side = "base" if old.empty else "head"
            rows.append(
                PairedRow(model, kind, 0, 0, reason=f"not comparable: no {model} predictions at {side}")
            )
            continue
        if old["patient"].duplicated().any() or new["patient"].duplicated().any():
            rows.append(PairedRow(model, kind, 0, 0, reason="not comparable: a patient appears twice"))
            continue
        if set(old["patient"]) != set(new["patient"]):
            rows.append(PairedRow(model, kind, 0, 0, reason="not comparable: different patients"))
            continue
        paired = old.merge(new, on="patient", suffixes=("_base", "_head")).sort_values("patient")
        patients, positives = len(paired), int(paired["label_base"].sum())
        if (paired["label_base"] != paired["label_head"]).any():
            rows.append(
                PairedRow(model, kind, patients, positives, reason="not comparable: different labels")
            )
            continue
        try:
            test = delong_paired_test(
                paired["label_base"].to_numpy(),
                paired["score_base"].to_numpy(),
                paired["score_head"].to_numpy(),
                confidence=CONFIDENCE,
            )
        except UserError as exc:
            rows.append(PairedRow(model, kind, patients, positives, reason=f"not testable: {exc}"))
            continue
        rows.append(PairedRow(model, kind, patients, positives, test=test))
    return rows


def format_p(p_value: float) -> str:
    """A p-value with 3 decimals, ``< 0.001`` below that."""
    return "< 0.001" if p_value < 0.001 else f"{p_value:.3f}"


def paired_cells(row: PairedRow) -> list[str]:
    """Model | predictions | patients | AUC base | AUC head | ΔAUC [CI] | p | verdict, formatted."""
    patients = f"{row.patients} ({row.positives} metastases)" if row.patients else MISSING
    if row.test is None:
        return [row.model, row.kind, patients, MISSING, MISSING, MISSING, MISSING, row.verdict]
    t = row.test
    delta = f"{t.delta:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}]"
    return [
        row.model,
        row.kind,
        patients,
        f"{t.auc_a:.3f}",
        f"{t.auc_b:.3f}",
        delta,
        format_p(t.p_value),
        row.verdict,
    ]


def paired_markdown(rows: Sequence[PairedRow], base: str, head: str, absent: Sequence[str] = ()) -> str:
    """The report section "Is the change real?" from :func:`pair_predictions` rows; ``absent`` lists
    prediction files that neither revision has."""
    heading = "## Is the change real? (paired on the same patients)\n"
    files = " or ".join(f"`{path}`" for path in absent)
    notes = [f"Neither revision has {files}: no paired comparison of those predictions.\n"] if absent else []
    if not rows:
        return "\n".join([heading, *notes])
    held_out = max((r.patients for r in rows if r.kind == "held-out"), default=0)
    out_of_fold = max((r.patients for r in rows if r.kind == "out-of-fold"), default=0)
    external = max((r.patients for r in rows if r.kind == "external"), default=0)
    small = ""
    if held_out:
        small = (
            f" The held-out set is small ({held_out} patients per model): only a large difference there "
            "can stand out from noise"
            + (f"; the out-of-fold predictions cover {out_of_fold} patients." if out_of_fold else ".")
        )
    if external:
        small += (
            f" The external rows are the second site's {external} patients, scored by each revision's final "
            "models: whether a change travels to a hospital the models never saw."
        )
    pct = f"{CONFIDENCE:.0%}"
    explanation = (
        f"ΔAUC is `{head}` minus `{base}` on the same patients, with DeLong's {pct} interval and p-value for "
        "two correlated ROC curves (DeLong et al. 1988): pairing cancels the noise both revisions share "
        f'(which patients are easy or hard). "within noise" means the interval contains 0 (p ≥ '
        f"{1 - CONFIDENCE:.2f}); it covers patient sampling only, not a retrain's seed-to-seed noise.{small}"
    )
    table = markdown_table(
        [
            "Model",
            "Predictions",
            "Patients",
            f"AUC {base}",
            f"AUC {head}",
            f"ΔAUC [{pct} CI]",
            "p",
            "Verdict",
        ],
        [paired_cells(r) for r in rows],
    )
    return "\n".join([heading, explanation + "\n", table + "\n", *notes])


def paired_section(base: str, head: str = dvc_cli.WORKSPACE, repo: Path = Path(".")) -> str:
    """The report's paired section for revisions ``base`` and ``head`` of ``repo``.

    A predictions file present at one revision only raises :class:`UserError` (the comparison would be
    silently incomplete); one absent at both (a pipeline without it) is noted in the section.
    """
    rows: list[PairedRow] = []
    absent = []
    for kind, path in PREDICTION_FILES:
        old = load_predictions(base, path, repo)
        new = load_predictions(head, path, repo)
        if kind in OPTIONAL_PREDICTIONS:
            old, new = (None if p is None or p.empty else p for p in (old, new))
        if old is None and new is None:
            absent.append(path)
            continue
        if kind in OPTIONAL_PREDICTIONS and (old is None or new is None):
            present = new if old is None else old
            assert present is not None
            side = base if old is None else head
            reason = f"not comparable: no {kind} cohort at {side}"
            rows += [PairedRow(m, kind, 0, 0, reason=reason) for m in sorted(set(present["model"]))]
            continue
        if old is None:
            raise missing_predictions_error(base, path)
        if new is None:
            raise missing_predictions_error(head, path)
        rows += pair_predictions(old, new, kind)
    rows.sort(key=lambda r: r.model)  # per model: out-of-fold, then held-out (stable sort)
    return paired_markdown(rows, base, head, absent)


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
    paired = paired_section(base, head, repo)  # first: a missing predictions file fails fast
    params = dvc_cli.params_diff(base, head, repo)
    metrics = metrics_diff(base, head, repo, all_metrics=all_metrics)
    image_dir = out_dir / ".dvc_images"
    doc = dvc_cli.plots_json(dvc_cli.revisions(base, head), repo, image_dir=image_dir.resolve())
    plots = parse_plots(doc, root=repo)
    pngs = write_pngs(plots, out_dir)

    command = f"python -m metastases.compare.report --base {base} --head {head}"
    text = "\n".join(
        [
            f"# Comparison: `{base}` → `{head}`\n",
            f"Written by `{command}` from the predictions files of both revisions, `dvc params diff`, "
            f"`dvc metrics diff` and `dvc plots diff` (metrics rounded to {PRECISION} digits as DVC prints "
            "them; pictures rendered offline from DVC's own plot specs).\n",
            paired,
            params_section(params, base, head),
            metrics_section(metrics, base, head, all_metrics),
            plots_section(pngs, out_dir),
            evidence_section(base, head, out_dir, repo),
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
