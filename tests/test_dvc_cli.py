"""The comparison path through the real ``dvc`` CLI, on a toy pipeline in a temporary Git + DVC repository.

The toy's stages are one small Python script that writes, instantly, metrics, predictions and plot files
with the names and shapes of the real pipeline's (metrics/evaluate.json, metrics/predictions.csv,
plots/roc/model_2d.csv, plots/train/model_2d.csv, ...). Its per-patient scores separate the classes better
with more ``train_2d.epochs`` / ``train_3d.epochs``, and every metric is computed from them, so changing a
param visibly moves the metrics and the paired comparison of the report has real numbers to test. The
top-level ``plots:`` block is the real dvc.yaml's, so the plot definitions users get are the ones tested here.

One repository is shared by the whole module (DVC calls cost about a second each): commit ``base``, then
``head`` with ``train_2d.epochs`` 4 -> 8; the experiment tests come last because they change the workspace.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from metastases.compare.render import remote_references
from metastases.compare.report import metrics_diff

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]

# The real pipeline's output names, in one place: the toy stage below writes exactly these.
METRICS = ("ingest", "split", "train_2d", "train_3d", "cv", "evaluate", "external")
PREDICTIONS = ("metrics/cv_predictions.csv", "metrics/predictions.csv", "metrics/external_predictions.csv")
ROC_IDS = ("roc", "cv_roc", "external_roc")
LOSS_IDS = ("loss_2d", "loss_3d", "validation_auc")
CONFUSION_IDS = ("confusion_2d", "confusion_3d")

TOY_STAGE = r'''
"""Toy stand-in for the real pipeline: writes its metrics, predictions and plot files (same names and
shapes) at once."""
import csv, json, math, statistics, sys
from pathlib import Path
import yaml

stage = sys.argv[1]
params = yaml.safe_load(Path("params.yaml").read_text())
CLASSES = ("normal", "metastases")
TEST = [f"toy-{i:02d}" for i in range(20)]  # held-out patients
TRAIN = [f"toy-{i:02d}" for i in range(20, 50)]  # cross-validated patients
FOLDS = params["split"]["folds"]


def dump(path, data):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def table(path, header, rows):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def label(patient):
    return int(patient[-2:]) % 2


def scores(model, patients, spread):
    """More epochs, better separated: sigmoid(+-separation + the patient's fixed noise in [-3, 3))."""
    separation = params[f"train_{model}"]["epochs"] / spread
    n, offset = len(patients), 3 if model == "3d" else 0
    noise = [6 * ((7 * i + offset) % n) / n - 3 for i in range(n)]
    return [round(1 / (1 + math.exp(-(separation * (2 * label(p) - 1) + z))), 4)
            for p, z in zip(patients, noise)]


def auc(labels, scores):  # Mann-Whitney
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    return round(sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg)), 4)


def at(labels, scores, threshold):
    hit = [int(s >= threshold) for s in scores]
    tp = sum(h and y for h, y in zip(hit, labels))
    tn = sum(not h and not y for h, y in zip(hit, labels))
    sens, spec = tp / sum(labels), tn / (len(labels) - sum(labels))
    return {"accuracy": round((tp + tn) / len(labels), 4), "balanced_accuracy": round((sens + spec) / 2, 4),
            "sensitivity": round(sens, 4), "specificity": round(spec, 4),
            "f1": round(2 * tp / (2 * tp + (len(labels) - tp - tn)), 4)}


def roc(labels, scores):
    rows = [(0.0, 0.0, 1.0)]
    for t in sorted(set(scores), reverse=True):
        fp = sum(s >= t and not y for y, s in zip(labels, scores))
        tp = sum(s >= t and y for y, s in zip(labels, scores))
        rows.append((round(fp / (len(labels) - sum(labels)), 4), round(tp / sum(labels), 4), t))
    return rows


if stage == "ingest":
    dump("metrics/ingest.json", {"patients": len(TEST) + len(TRAIN), "series": 150, "skipped_series": 0})
elif stage == "split":
    dump("metrics/split.json", {"train": len(TRAIN), "test": len(TEST), "folds": FOLDS})
elif stage in ("train-2d", "train-3d"):
    m = stage[-2:]
    epochs = params[f"train_{m}"]["epochs"]
    labels = [label(p) for p in TRAIN]
    oof = auc(labels, scores(m, TRAIN, 5))
    header = ["epoch", *(f"{s}_fold{f}" for f in range(FOLDS) for s in ("train", "val")),
              "train_loss", "validation_loss", "validation_auc"]
    rows = []
    for e in range(epochs):
        per_fold = [round(c / (1 + 0.3 * e * (1 - 0.1 * f)), 4) for f in range(FOLDS) for c in (0.7, 0.75)]
        means = [round(sum(per_fold[0::2]) / FOLDS, 4), round(sum(per_fold[1::2]) / FOLDS, 4)]
        rows.append([e, *per_fold, *means, round(0.5 + (oof - 0.5) * (e + 1) / epochs, 4)])
    table(f"plots/train/model_{m}.csv", header, rows)
    folds = {f"fold{f}": {"train_loss": rows[-1][1 + 2 * f], "val_loss": rows[-1][2 + 2 * f],
                          "val_auc": round(oof - 0.01 * f, 4), "learned": True, "attempts": 1}
             for f in range(FOLDS)}
    dump(f"metrics/train_{m}.json", {
        "epochs": epochs, "folds": FOLDS, "train_patients": len(TRAIN), "learned": True,
        "folds_learned": FOLDS, "folds_not_learned": 0, "restarts_used": 0,
        "train_loss_mean": round(statistics.mean(f["train_loss"] for f in folds.values()), 4),
        "oof_auc": oof, **folds})
elif stage == "cross-validate":
    out, predictions = {}, []
    for m in ("2d", "3d"):
        labels, s = [label(p) for p in TRAIN], scores(m, TRAIN, 5)
        fold_of = [i % FOLDS for i in range(len(TRAIN))]
        predictions += [(p, y, x, m, f) for p, y, x, f in zip(TRAIN, labels, s, fold_of)]
        folds = []
        for f in range(FOLDS):
            ys = [y for y, g in zip(labels, fold_of) if g == f]
            xs = [x for x, g in zip(s, fold_of) if g == f]
            folds.append({"fold": f, "auc": auc(ys, xs), "accuracy": at(ys, xs, 0.5)["accuracy"],
                          "patients": len(ys), "learned": True})
        aucs = [f["auc"] for f in folds]
        accuracies = [f["accuracy"] for f in folds]
        out[m] = {"oof_auc": auc(labels, s), "auc_mean": round(statistics.mean(aucs), 4),
                  "auc_std": round(statistics.stdev(aucs), 4), "auc_min": min(aucs),
                  "accuracy_mean": round(statistics.mean(accuracies), 4),
                  "accuracy_std": round(statistics.stdev(accuracies), 4),
                  "threshold": round(statistics.median(s), 4), "learned": True, "folds_not_learned": 0,
                  **{f"fold{f['fold']}_auc": f["auc"] for f in folds}, "folds": folds}
        table(f"plots/cv_roc/model_{m}.csv", ["fpr", "tpr", "threshold"], roc(labels, s))
    table("metrics/cv_predictions.csv", ["patient", "label", "score", "model", "fold"], predictions)
    dump("metrics/cv.json", out)
elif stage == "evaluate":
    cv = json.loads(Path("metrics/cv.json").read_text())
    out, predictions = {}, []
    for m in ("2d", "3d"):
        labels, s = [label(p) for p in TEST], scores(m, TEST, 4)
        predictions += [(p, y, x, m) for p, y, x in zip(TEST, labels, s)]
        value = auc(labels, s)
        table(f"plots/roc/model_{m}.csv", ["fpr", "tpr", "threshold"], roc(labels, s))
        table(f"plots/confusion/model_{m}.csv", ["patient", "actual", "predicted"],
              [(p, CLASSES[y], CLASSES[int(x >= 0.5)]) for p, y, x in zip(TEST, labels, s)])
        out[m] = {"auc": value, "auc_ci_low": round(max(0, value - 0.15 - 0.3 * (1 - value)), 4),
                  "auc_ci_high": round(min(1, value + 0.5 * (1 - value)), 4), **at(labels, s, 0.5),
                  "threshold": 0.5, "at_cv_threshold": at(labels, s, cv[m]["threshold"]),
                  "test_patients": len(TEST), "learned": True, "ensemble_models": FOLDS}
    table("metrics/predictions.csv", ["patient", "label", "score", "model"], predictions)
    dump("metrics/evaluate.json", out)
elif stage == "external":
    EXTERNAL = [f"site-b-{i:02d}" for i in range(12)]
    out, predictions = {}, []
    for m in ("2d", "3d"):
        labels, s = [label(p) for p in EXTERNAL], scores(m, EXTERNAL, 8)
        predictions += [(p, y, x, m, "evaluation") for p, y, x in zip(EXTERNAL, labels, s)]
        table(f"plots/external_roc/model_{m}.csv", ["fpr", "tpr", "threshold"], roc(labels, s))
        out[m] = {"auc": auc(labels, s)}
    table("metrics/external_predictions.csv", ["patient", "label", "score", "model", "part"], predictions)
    dump("metrics/external.json", out)
'''

TOY_STAGES = """
stages:
  ingest:
    cmd: python toy_stage.py ingest
    deps: [toy_stage.py]
    metrics: [{metrics/ingest.json: {cache: false}}]
  split:
    cmd: python toy_stage.py split
    deps: [toy_stage.py, metrics/ingest.json]
    params: [seed, split]
    metrics: [{metrics/split.json: {cache: false}}]
  train-2d:
    cmd: python toy_stage.py train-2d
    deps: [toy_stage.py, metrics/split.json]
    params: [split.folds, train_2d]
    outs: [{plots/train/model_2d.csv: {cache: false}}]
    metrics: [{metrics/train_2d.json: {cache: false}}]
  train-3d:
    cmd: python toy_stage.py train-3d
    deps: [toy_stage.py, metrics/split.json]
    params: [split.folds, train_3d]
    outs: [{plots/train/model_3d.csv: {cache: false}}]
    metrics: [{metrics/train_3d.json: {cache: false}}]
  cross-validate:
    cmd: python toy_stage.py cross-validate
    deps: [toy_stage.py, metrics/train_2d.json, metrics/train_3d.json]
    params: [split.folds, train_2d, train_3d]
    outs:
      - metrics/cv_predictions.csv: {cache: false}
      - plots/cv_roc/model_2d.csv: {cache: false}
      - plots/cv_roc/model_3d.csv: {cache: false}
    metrics: [{metrics/cv.json: {cache: false}}]
  evaluate:
    cmd: python toy_stage.py evaluate
    deps: [toy_stage.py, metrics/cv.json]
    params: [split.folds, train_2d, train_3d]
    outs:
      - metrics/predictions.csv: {cache: false}
      - plots/roc/model_2d.csv: {cache: false}
      - plots/roc/model_3d.csv: {cache: false}
      - plots/confusion/model_2d.csv: {cache: false}
      - plots/confusion/model_3d.csv: {cache: false}
    metrics: [{metrics/evaluate.json: {cache: false}}]
  external:
    cmd: python toy_stage.py external
    deps: [toy_stage.py, metrics/cv.json]
    params: [train_2d, train_3d]
    outs:
      - metrics/external_predictions.csv: {cache: false}
      - plots/external_roc/model_2d.csv: {cache: false}
      - plots/external_roc/model_3d.csv: {cache: false}
    metrics: [{metrics/external.json: {cache: false}}]
"""

PARAMS = {
    "seed": 42,
    "split": {"folds": 3},
    "train_2d": {"epochs": 4, "lr": 0.001},
    "train_3d": {"epochs": 3, "lr": 0.001},
}


def plots_block() -> list:
    """The real dvc.yaml's top-level ``plots:``: the plot definitions users get are the ones tested."""
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["plots"]


def _env() -> dict[str, str]:
    # the venv's bin first: stage commands say `python`, and `dvc` is the venv's
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def run(cmd: list[str], cwd: Path, timeout: float = 120) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def dvc(repo: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], repo)


def git(repo: Path, *args: str) -> str:
    return run(["git", *args], repo)


def git_json(repo: Path, rev: str, path: str) -> dict:
    return json.loads(git(repo, "show", f"{rev}:{path}"))


@dataclass(frozen=True)
class Toy:
    repo: Path
    base: str = "base"
    head: str = "head"


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Toy:
    repo = tmp_path_factory.mktemp("toy_pipeline")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "toy@example.invalid")
    git(repo, "config", "user.name", "toy")
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    dvc(repo, "config", "core.check_update", "false")
    dvc(repo, "config", "studio.offline", "true")

    (repo / "toy_stage.py").write_text(TOY_STAGE)
    pipeline = yaml.safe_load(TOY_STAGES) | {"plots": plots_block()}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    (repo / ".gitignore").write_text("/report/\n/dvc_plots/\n")
    dvc(repo, "repro", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    git(repo, "tag", "base")

    changed = PARAMS | {"train_2d": {"epochs": 8, "lr": 0.001}}
    (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    dvc(repo, "repro", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "head: train_2d.epochs 4 -> 8")
    git(repo, "tag", "head")
    yield Toy(repo)
    # a queue worker still idling would outlive the test session: stop it
    subprocess.run([sys.executable, "-m", "dvc", "queue", "stop"], cwd=repo, env=_env(), capture_output=True)


def test_toy_pipeline_is_up_to_date_and_writes_every_metrics_file(toy: Toy) -> None:
    assert sorted(p.stem for p in (toy.repo / "metrics").glob("*.json")) == sorted(METRICS)
    tracked = git(toy.repo, "ls-files", "metrics", "plots").split()
    assert set(PREDICTIONS) <= set(tracked)  # committed, as the report reads them from Git
    # every file the real plots: block draws exists (a renamed output would leave a plot empty)
    for plot in plots_block():
        (definition,) = plot.values()
        assert set(definition["y"]) <= set(tracked), definition["y"]
    assert "up to date" in dvc(toy.repo, "status")
    assert git(toy.repo, "status", "--porcelain").strip() == ""


def test_metrics_diff_shows_changed_metrics_with_deltas(toy: Toy) -> None:
    out = dvc(toy.repo, "metrics", "diff", toy.base, toy.head)
    rows = {
        (cells[0], cells[1]): cells[2:] for cells in (line.split() for line in out.splitlines()[1:]) if cells
    }

    old = git_json(toy.repo, toy.base, "metrics/evaluate.json")
    new = git_json(toy.repo, toy.head, "metrics/evaluate.json")
    for metric in ("auc", "accuracy", "sensitivity", "specificity", "f1"):
        base_value, head_value, change = rows[("metrics/evaluate.json", f"2d.{metric}")]
        assert float(base_value) == old["2d"][metric] and float(head_value) == new["2d"][metric]
        assert float(change) == pytest.approx(new["2d"][metric] - old["2d"][metric], abs=1e-5)
        assert float(change) > 0  # more epochs, better toy 2D model
    assert ("metrics/evaluate.json", "3d.auc") not in rows  # unchanged: not listed
    old_cv = git_json(toy.repo, toy.base, "metrics/cv.json")["2d"]
    new_cv = git_json(toy.repo, toy.head, "metrics/cv.json")["2d"]
    assert [float(v) for v in rows[("metrics/cv.json", "2d.auc_mean")][:2]] == [
        old_cv["auc_mean"],
        new_cv["auc_mean"],
    ]
    assert ("metrics/cv.json", "2d.fold0_auc") in rows  # per-fold AUCs are flat scalars too
    assert not any(name.startswith("2d.folds") for _, name in rows)  # per-fold lists stay out of the table


def test_metrics_diff_json_has_the_flat_auc_interval(toy: Toy) -> None:
    # DVC drops lists from metrics: the interval is two scalars so that diffs and exp show carry it
    diff = json.loads(dvc(toy.repo, "metrics", "diff", toy.base, toy.head, "--json"))
    evaluate = diff["metrics/evaluate.json"]
    old = git_json(toy.repo, toy.base, "metrics/evaluate.json")["2d"]
    new = git_json(toy.repo, toy.head, "metrics/evaluate.json")["2d"]
    for bound in ("auc_ci_low", "auc_ci_high"):
        assert evaluate[f"2d.{bound}"]["old"] == old[bound]
        assert evaluate[f"2d.{bound}"]["new"] == new[bound]
        assert evaluate[f"2d.{bound}"]["diff"] == pytest.approx(new[bound] - old[bound])
    assert old["auc_ci_low"] < old["auc"] < old["auc_ci_high"]
    assert not any("auc_ci95" in name for names in diff.values() for name in names)
    train = diff["metrics/train_2d.json"]
    assert {"train_loss_mean", "oof_auc", "fold0.val_auc"} <= train.keys()


def _dvc_html_specs(page: str) -> dict[str, dict]:
    """Plot id -> Vega-Lite spec of an HTML page written by ``dvc plots show/diff``."""
    found = re.findall(
        r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (.*?);\s*vegaEmbed',
        page,
        re.S,
    )
    return {plot_id: json.loads(spec) for plot_id, spec in found}


def _revisions(spec: dict) -> set[str]:
    return {row["rev"] for row in spec["data"]["values"]}


def test_plots_diff_html_draws_roc_and_loss_of_both_revisions(toy: Toy, tmp_path: Path) -> None:
    dvc(toy.repo, "plots", "diff", toy.base, toy.head, "-o", str(tmp_path / "cdn"))
    page = (tmp_path / "cdn" / "index.html").read_text()
    specs = _dvc_html_specs(page)
    assert specs.keys() == {plot_id for plot in plots_block() for plot_id in plot}
    for plot_id in (*ROC_IDS, *LOSS_IDS, *CONFUSION_IDS):
        assert _revisions(specs[plot_id]) == {toy.base, toy.head}, plot_id
    roc_files = {row["filename"] for row in specs["roc"]["data"]["values"]}
    assert roc_files == {"model_2d.csv", "model_3d.csv"}  # overlaid
    assert specs["confusion_2d"]["spec"]["encoding"]["x"]["title"] == "Actual class"
    # DVC's own page loads Vega from a CDN: blank on an air-gapped network
    assert any("cdn.jsdelivr.net" in ref for ref in remote_references(page))

    # ... and with the offline template it draws the same plots with no remote script
    template = tmp_path / "offline_template.html"
    run([sys.executable, "-m", "metastases.compare.plots", "--dvc-template", str(template)], toy.repo)
    dvc(
        toy.repo,
        "plots",
        "diff",
        toy.base,
        toy.head,
        "-o",
        str(tmp_path / "offline"),
        "--html-template",
        str(template),
    )
    offline = (tmp_path / "offline" / "index.html").read_text()
    assert remote_references(offline) == []
    assert _dvc_html_specs(offline).keys() == specs.keys()


def test_plot_legends_name_the_models_and_the_loss_curves(toy: Toy) -> None:
    """DVC dashes a curve by file or field: those names are the legend a reader sees."""
    doc = json.loads(dvc(toy.repo, "plots", "diff", toy.base, toy.head, "--json"))
    assert not doc.get("errors"), doc["errors"]  # every plot file of the real plots: block was found
    specs = {plot_id: entries[0]["content"] for plot_id, entries in doc["data"].items()}

    def dashes(plot_id: str) -> tuple[str, list[str]]:
        stroke = specs[plot_id]["encoding"]["strokeDash"]
        return stroke["field"], stroke["scale"]["domain"]

    for plot_id in ("roc", "cv_roc", "validation_auc"):
        field, domain = dashes(plot_id)
        assert {"model_2d.csv", "model_3d.csv"} <= set(domain), (plot_id, domain)
        assert {row[field] for row in specs[plot_id]["data"]["values"]} == {"model_2d.csv", "model_3d.csv"}
    for plot_id in ("loss_2d", "loss_3d"):
        field, domain = dashes(plot_id)
        assert domain == ["train_loss", "validation_loss"], (plot_id, domain)
        values = specs[plot_id]["data"]["values"]
        assert {row[field] for row in values} == {"train_loss", "validation_loss"}
        train = [row for row in values if row[field] == "train_loss" and row["rev"] == toy.head]
        assert [row["dvc_inferred_y_value"] for row in train] == [row["train_loss"] for row in train]
    # the head revision trained 2D for 8 epochs (base: 4); 3D is unchanged at 3 epochs
    epochs = {
        rev: {int(row["epoch"]) for row in specs["loss_2d"]["data"]["values"] if row["rev"] == rev}
        for rev in (toy.base, toy.head)
    }
    assert epochs == {toy.base: set(range(4)), toy.head: set(range(8))}


def test_offline_plots_cli_writes_self_contained_html_and_pngs(toy: Toy) -> None:
    out = toy.repo / "dvc_plots"
    run([sys.executable, "-m", "metastases.compare.plots", toy.base, toy.head, "--out", str(out)], toy.repo)
    page = (out / "index.html").read_text()
    assert remote_references(page) == []
    assert not re.search(r"<script[^>]*\bsrc=", page)  # every script inline
    specs = json.loads(re.search(r"const specs = (.*);\n", page).group(1))
    by_id = {key.split("-", 2)[2]: spec for key, spec in specs.items()}  # div ids are plot-<n>-<id>
    for plot_id in (*ROC_IDS, *LOSS_IDS, *CONFUSION_IDS):
        assert _revisions(by_id[plot_id]) == {toy.base, toy.head}
        assert (out / f"{plot_id}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _markdown_rows(text: str, first_header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header starts with ``| first_header |``."""
    lines = text.splitlines()
    header = re.compile(rf"^\|\s*{first_header}\s*\|")  # DVC pads its cells, the report does not
    start = next(i for i, line in enumerate(lines) if header.match(line))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_report_table_matches_dvc_metrics_diff(toy: Toy) -> None:
    out = toy.repo / "report"
    run(
        [
            sys.executable,
            "-m",
            "metastases.compare.report",
            "--base",
            toy.base,
            "--head",
            toy.head,
            "--out",
            "report",
        ],
        toy.repo,
    )
    report = (out / "report.md").read_text()

    # DVC's own table (`dvc metrics diff --md`) and the report's: same rows, same printed numbers
    # (DVC lists the files in no stable order; the report puts evaluate.json and cv.json first)
    dvc_table = dvc(toy.repo, "metrics", "diff", toy.base, toy.head, "--md")
    metrics_start = report.index("| Path | Metric |")
    report_rows = _markdown_rows(report[metrics_start:], "Path")
    assert sorted(report_rows) == sorted(_markdown_rows(dvc_table, "Path"))
    assert report_rows[0][:2] == ["metrics/evaluate.json", "2d.accuracy"]
    changed = {tuple(row[:2]) for row in _markdown_rows(report[metrics_start:], "Path")}
    assert ("metrics/evaluate.json", "2d.auc") in changed

    params = _markdown_rows(report, "Path")  # the first table: params that changed
    assert params == [["params.yaml", "train_2d.epochs", "4", "8"]]

    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {f"{plot_id}.png" for plot in plots_block() for plot_id in plot} == set(images)
    assert all((out / image).read_bytes()[:4] == b"\x89PNG" for image in images)


def test_report_pairs_the_predictions_of_both_revisions(toy: Toy) -> None:
    out = toy.repo / "report_paired"
    report_cli = [sys.executable, "-m", "metastases.compare.report", "--base", toy.base, "--head", toy.head]
    run([*report_cli, "--out", str(out)], toy.repo)
    report = (out / "report.md").read_text()
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Is the change real? (paired on the same patients)"
    assert "Neither revision has" not in report  # the toy writes every predictions file

    rows = {(row[0], row[1]): row for row in _markdown_rows(report, "Model")}
    assert list(rows) == [
        (dim, kind) for dim in ("2d", "3d") for kind in ("out-of-fold", "held-out", "external")
    ]
    auc_of = {
        "out-of-fold": lambda rev, model: git_json(toy.repo, rev, "metrics/cv.json")[model]["oof_auc"],
        "held-out": lambda rev, model: git_json(toy.repo, rev, "metrics/evaluate.json")[model]["auc"],
        "external": lambda rev, model: git_json(toy.repo, rev, "metrics/external.json")[model]["auc"],
    }
    patients = {
        "out-of-fold": "30 (15 metastases)",
        "held-out": "20 (10 metastases)",
        "external": "12 (6 metastases)",
    }
    for (model, kind), (_, _, counted, auc_base, auc_head, delta, _p, verdict) in rows.items():
        old, new = auc_of[kind](toy.base, model), auc_of[kind](toy.head, model)
        # the paired AUCs are those of the metrics files, from the same predictions
        assert counted == patients[kind]
        assert float(auc_base) == pytest.approx(old, abs=6e-4)
        assert float(auc_head) == pytest.approx(new, abs=6e-4)
        assert float(delta.split()[0]) == pytest.approx(new - old, abs=1.5e-3)
        if model == "2d":  # more epochs at head: a real, positive difference with an interval around it
            assert new > old and verdict == "better"
            low, high = (float(x) for x in re.findall(r"[+-]\d\.\d{3}", delta)[1:])
            assert low < new - old < high
        else:  # 3d unchanged: the same scores at both revisions
            assert delta == "+0.000 [+0.000, +0.000]" and verdict.startswith("within noise")


def _experiments(exp_show: list[dict]) -> dict[str, dict]:
    """Experiment name -> its ``data`` (params, metrics; ``rev``: its commit) in ``dvc exp show --json``."""
    found = {}
    for baseline in exp_show:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = {**rev["data"], "rev": rev["rev"]}
    return found


def _value(data: dict, kind: str, path: str, dotted: str) -> object:
    value = data[kind][path]["data"]
    for key in dotted.split("."):
        value = value[key]
    return value


def test_report_compares_the_details_with_the_base_from_before_they_were_split_off(tmp_path: Path) -> None:
    """A base revision kept every number in the declared metrics file; the head declares a headline and
    writes the rest to metrics/details/: the report pairs each detail with the base's headline file, and
    lists only what changed (through the real dvc metrics diff)."""
    repo = tmp_path / "split"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "toy@example.invalid")
    git(repo, "config", "user.name", "toy")
    dvc(repo, "init", "-q")
    (repo / "dvc.yaml").write_text("metrics:\n  - metrics/cv.json\n")
    (repo / "metrics").mkdir()
    (repo / "metrics/cv.json").write_text(json.dumps({"2d": {"oof_auc": 0.6, "brier": 0.2, "folds": 5}}))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base: one file")
    (repo / "metrics/details").mkdir()
    (repo / "metrics/details/cv.json").write_text(
        json.dumps({"2d": {"oof_auc": 0.6, "brier": 0.25, "folds": 5}})
    )
    (repo / "metrics/cv.json").write_text(json.dumps({"2d": {"oof_auc": 0.6}}))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "head: headline and details")
    diff = metrics_diff("HEAD~1", "HEAD", repo, all_metrics=False)
    assert diff == {
        "metrics/details/cv.json": {"2d.brier": {"old": 0.2, "new": 0.25, "diff": pytest.approx(0.05)}}
    }
    every = metrics_diff("HEAD~1", "HEAD", repo, all_metrics=True)
    assert every["metrics/details/cv.json"]["2d.folds"] == {"old": 5, "new": 5, "diff": 0}
    assert set(every["metrics/cv.json"]) == {"2d.oof_auc"}


def test_exp_run_set_param_changes_metrics_and_exp_show_lists_them(toy: Toy) -> None:
    dvc(toy.repo, "exp", "run", "-q", "-S", "train_3d.epochs=6", "-n", "ep6")
    experiments = _experiments(json.loads(dvc(toy.repo, "exp", "show", "--json")))
    ep6 = experiments["ep6"]
    assert _value(ep6, "params", "params.yaml", "train_3d.epochs") == 6
    head_auc = git_json(toy.repo, toy.head, "metrics/evaluate.json")["3d"]["auc"]
    assert _value(ep6, "metrics", "metrics/evaluate.json", "3d.auc") > head_auc
    # exp show reports what the experiment's own commit holds (read from Git, not through DVC) ...
    committed = git_json(toy.repo, ep6["rev"], "metrics/cv.json")["3d"]
    assert _value(ep6, "metrics", "metrics/cv.json", "3d.auc_mean") == committed["auc_mean"]
    assert _value(ep6, "metrics", "metrics/cv.json", "3d.oof_auc") == committed["oof_auc"]
    # ... which is the new run's: 6 epochs separate the toy's 3D scores better than the head's 3
    assert committed["oof_auc"] > git_json(toy.repo, toy.head, "metrics/cv.json")["3d"]["oof_auc"]


def test_exp_queue_runs_queued_experiments(toy: Toy) -> None:
    dvc(toy.repo, "exp", "run", "--queue", "-S", "train_3d.epochs=2", "-n", "queued2")
    dvc(toy.repo, "queue", "start")
    deadline = time.monotonic() + 90
    status = ""
    while time.monotonic() < deadline:
        status = dvc(toy.repo, "queue", "status")
        row = next((line for line in status.splitlines() if " queued2 " in f" {line} "), "")
        if "Success" in row or "Failed" in row:
            break
        time.sleep(1)
    assert "Success" in row, f"queued experiment did not succeed within 90 s:\n{status}"

    queued = _experiments(json.loads(dvc(toy.repo, "exp", "show", "--json")))["queued2"]
    assert _value(queued, "params", "params.yaml", "train_3d.epochs") == 2
    head_auc = git_json(toy.repo, toy.head, "metrics/evaluate.json")["3d"]["auc"]
    assert _value(queued, "metrics", "metrics/evaluate.json", "3d.auc") < head_auc
