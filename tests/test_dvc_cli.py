"""The comparison path through the real ``dvc`` CLI, on a toy pipeline in a temporary Git + DVC repository.

The toy's stages are one small Python script that writes, instantly, metrics and plot files with the
names and shapes of the real pipeline's (metrics/evaluate.json, plots/roc/2d.csv, ...); its metrics
improve with ``train_2d.epochs`` / ``train_3d.epochs`` so that changing a param visibly moves them. The
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

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]

# The real pipeline's output names, in one place: the toy stage below writes exactly these.
METRICS = ("ingest", "split", "train_2d", "train_3d", "cv", "evaluate")
ROC_IDS = ("roc", "cv_roc")
LOSS_IDS = ("train_loss_2d", "train_loss_3d", "val_loss_2d", "val_loss_3d", "cv_loss_2d", "cv_loss_3d")

TOY_STAGE = r'''
"""Toy stand-in for the real pipeline: writes its metrics and plot files (same names and shapes) at once."""
import csv, json, math, sys
from pathlib import Path
import yaml

stage = sys.argv[1]
params = yaml.safe_load(Path("params.yaml").read_text())


def dump(path, data):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def table(path, header, rows):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def quality(model):  # more epochs, better toy model: every metric moves with the param
    return 1 - 0.5 * math.exp(-params[f"train_{model}"]["epochs"] / 4)


if stage == "ingest":
    dump("metrics/ingest.json", {"patients": 12, "series": 36, "skipped_series": 0})
elif stage == "split":
    dump("metrics/split.json", {"train": 9, "test": 3, "folds": params["split"]["folds"]})
elif stage in ("train-2d", "train-3d"):
    m = stage[-2:]
    epochs, q = params[f"train_{m}"]["epochs"], quality(m)
    loss = [(s, s // 3, round(1 / (1 + s * q), 4)) for s in range(3 * epochs)]
    table(f"plots/train_{m}/loss.csv", ["step", "epoch", "loss"], loss)
    table(f"plots/train_{m}/val.csv", ["epoch", "val_loss", "val_accuracy"],
          [(e, round(1.2 / (1 + e * q), 4), round(q * e / epochs, 4)) for e in range(epochs)])
    dump(f"metrics/train_{m}.json", {"train_loss": loss[-1][2], "val_loss": round(1.2 / (1 + epochs * q), 4),
                                     "val_accuracy": round(q, 4), "epochs": epochs})
elif stage == "cross-validate":
    out = {}
    for m in ("2d", "3d"):
        q, k = quality(m), params["split"]["folds"]
        folds = [{"fold": f, "auc": round(q - 0.02 * f, 4), "accuracy": round(q - 0.03 * f, 4)}
                 for f in range(k)]
        out[m] = {"auc_mean": round(q - 0.01 * (k - 1), 4), "auc_std": round(0.01 * k, 4),
                  "accuracy_mean": round(q - 0.015 * (k - 1), 4), "accuracy_std": round(0.015 * k, 4),
                  "folds": folds}
        # wide: per-fold train/val loss columns, then their means
        header = ["epoch", *(f"{s}_fold{f}" for f in range(k) for s in ("train", "val")),
                  "train_mean", "val_mean"]
        rows = []
        for e in range(params[f"train_{m}"]["epochs"]):
            per_fold = [round(c / (1 + e * (q - 0.02 * f)), 4) for f in range(k) for c in (1.0, 1.1)]
            rows.append([e, *per_fold, round(sum(per_fold[0::2]) / k, 4), round(sum(per_fold[1::2]) / k, 4)])
        table(f"plots/cv_{m}/loss.csv", header, rows)
        table(f"plots/cv_roc/{m}.csv", ["fpr", "tpr", "threshold"],
              [(x, round(x ** (1.1 - q), 4) if x else 0, round(1 - x, 2)) for x in (0, 0.2, 0.5, 1)])
    dump("metrics/cv.json", out)
elif stage == "evaluate":
    out = {}
    for m in ("2d", "3d"):
        q = quality(m)
        table(f"plots/roc/{m}.csv", ["fpr", "tpr", "threshold"],
              [(x, round(x ** (1 - q), 4) if x else 0, round(1 - x, 2)) for x in (0, 0.1, 0.3, 0.6, 1)])
        actual = ["normal"] * 5 + ["metastases"] * 5
        flipped = {"normal": "metastases", "metastases": "normal"}
        predicted = [a if i < round(10 * q) else flipped[a] for i, a in enumerate(actual)]
        table(f"plots/confusion/{m}.csv", ["actual", "predicted"], list(zip(actual, predicted)))
        out[m] = {"auc": round(q, 4), "auc_ci95": [round(q - 0.1, 4), round(min(1, q + 0.1), 4)],
                  "accuracy": round(q - 0.05, 4), "balanced_accuracy": round(q - 0.05, 4),
                  "sensitivity": round(q - 0.02, 4), "specificity": round(q - 0.08, 4),
                  "f1": round(q - 0.04, 4)}
    dump("metrics/evaluate.json", out)
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
    params: [train_2d]
    outs: [{plots/train_2d: {cache: false}}]
    metrics: [{metrics/train_2d.json: {cache: false}}]
  train-3d:
    cmd: python toy_stage.py train-3d
    deps: [toy_stage.py, metrics/split.json]
    params: [train_3d]
    outs: [{plots/train_3d: {cache: false}}]
    metrics: [{metrics/train_3d.json: {cache: false}}]
  cross-validate:
    cmd: python toy_stage.py cross-validate
    deps: [toy_stage.py, metrics/split.json]
    params: [split.folds, train_2d, train_3d]
    outs: [{plots/cv_2d: {cache: false}}, {plots/cv_3d: {cache: false}}, {plots/cv_roc: {cache: false}}]
    metrics: [{metrics/cv.json: {cache: false}}]
  evaluate:
    cmd: python toy_stage.py evaluate
    deps: [toy_stage.py, metrics/train_2d.json, metrics/train_3d.json]
    params: [train_2d, train_3d]
    outs: [{plots/roc: {cache: false}}, {plots/confusion: {cache: false}}]
    metrics: [{metrics/evaluate.json: {cache: false}}]
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
    assert ("metrics/cv.json", "2d.auc_mean") in rows
    assert not any(name.startswith("2d.folds") for _, name in rows)  # per-fold lists stay out of the table


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
    for plot_id in (*ROC_IDS, *LOSS_IDS):
        assert _revisions(specs[plot_id]) == {toy.base, toy.head}, plot_id
    assert {row["filename"] for row in specs["roc"]["data"]["values"]} == {"2d.csv", "3d.csv"}  # overlaid
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


def test_offline_plots_cli_writes_self_contained_html_and_pngs(toy: Toy) -> None:
    out = toy.repo / "dvc_plots"
    run([sys.executable, "-m", "metastases.compare.plots", toy.base, toy.head, "--out", str(out)], toy.repo)
    page = (out / "index.html").read_text()
    assert remote_references(page) == []
    assert not re.search(r"<script[^>]*\bsrc=", page)  # every script inline
    specs = json.loads(re.search(r"const specs = (.*);\n", page).group(1))
    by_id = {key.split("-", 2)[2]: spec for key, spec in specs.items()}  # div ids are plot-<n>-<id>
    for plot_id in (*ROC_IDS, *LOSS_IDS):
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
    assert {"roc.png", "train_loss_2d.png", "val_loss_2d.png", "cv_loss_2d.png"} <= set(images)
    assert all((out / image).read_bytes()[:4] == b"\x89PNG" for image in images)


def _experiments(exp_show: list[dict]) -> dict[str, dict]:
    """Experiment name -> its ``data`` (params, metrics) in ``dvc exp show --json``."""
    found = {}
    for baseline in exp_show:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = rev["data"]
    return found


def _value(data: dict, kind: str, path: str, dotted: str) -> object:
    value = data[kind][path]["data"]
    for key in dotted.split("."):
        value = value[key]
    return value


def test_exp_run_set_param_changes_metrics_and_exp_show_lists_them(toy: Toy) -> None:
    dvc(toy.repo, "exp", "run", "-q", "-S", "train_3d.epochs=6", "-n", "ep6")
    experiments = _experiments(json.loads(dvc(toy.repo, "exp", "show", "--json")))
    ep6 = experiments["ep6"]
    assert _value(ep6, "params", "params.yaml", "train_3d.epochs") == 6
    head_auc = git_json(toy.repo, toy.head, "metrics/evaluate.json")["3d"]["auc"]
    assert _value(ep6, "metrics", "metrics/evaluate.json", "3d.auc") > head_auc
    assert _value(ep6, "metrics", "metrics/cv.json", "3d.auc_mean") is not None


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
