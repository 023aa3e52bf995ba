"""Unit tests of metastases.compare: DVC-style formatting, parsing DVC's plot JSON, offline rendering."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from dvc_render import render_html
from dvc_render.vega import VegaRenderer
from PIL import Image

from metastases.compare.render import (
    Plot,
    for_static_image,
    offline_dvc_template,
    offline_html,
    parse_plots,
    remote_references,
    render_png,
    slug,
    vegalite_version,
    write_pngs,
)
from metastases.compare.report import (
    diff_rows,
    format_value,
    markdown_table,
    metrics_section,
    pair_predictions,
    paired_section,
)

# A plot of two revisions in the shape `dvc plots diff --json` gives (DVC inlines values as strings).
ROC_SPEC = {
    "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
    "data": {
        "values": [
            {"fpr": "0", "tpr": "0", "rev": "main", "filename": "model_2d.csv"},
            {"fpr": "0.5", "tpr": "0.8", "rev": "main", "filename": "model_2d.csv"},
            {"fpr": "1", "tpr": "1", "rev": "main", "filename": "model_2d.csv"},
            {"fpr": "0", "tpr": "0", "rev": "workspace", "filename": "model_2d.csv"},
            {"fpr": "0.5", "tpr": "0.9", "rev": "workspace", "filename": "model_2d.csv"},
            {"fpr": "1", "tpr": "1", "rev": "workspace", "filename": "model_2d.csv"},
        ]
    },
    "title": {"text": "ROC </script> test", "anchor": "middle"},
    "width": 100,
    "height": 80,
    "mark": "line",
    "encoding": {
        "x": {"field": "fpr", "type": "quantitative"},
        "y": {"field": "tpr", "type": "quantitative"},
        "color": {"field": "rev"},
    },
}


def _png(path_or_bytes: Path | bytes) -> Image.Image:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- numbers and tables as `dvc metrics diff` prints them -------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.11619999999999997, "0.1162"),  # float noise of a subtraction, rounded to 5 digits
        (-0.13949999999999999, "-0.1395"),
        (0.123456789, "0.12346"),
        (4, "4"),  # ints untouched
        (None, "-"),  # absent on one side
        ("resnet18", "resnet18"),
    ],
)
def test_format_value_rounds_like_dvc(value: object, text: str) -> None:
    assert format_value(value) == text


def test_diff_rows_put_headline_files_first_sort_keys_and_mark_missing_deltas() -> None:
    diff = {
        "metrics/train_2d.json": {"train_loss_mean": {"old": 0.3, "new": 0.2, "diff": -0.1}},
        "metrics/cv.json": {"2d.auc_mean": {"old": None, "new": 0.7}},
        "metrics/evaluate.json": {
            "3d.auc": {"old": 0.5, "new": 0.75, "diff": 0.25},
            "2d.auc": {"old": 0.8, "new": 0.9, "diff": 0.09999999999999998},
        },
        "metrics/ingest.json": {"patients": {"old": 60, "new": 61, "diff": 1}},
    }
    rows = diff_rows(diff)
    assert [(r.path, r.name) for r in rows] == [
        ("metrics/evaluate.json", "2d.auc"),
        ("metrics/evaluate.json", "3d.auc"),
        ("metrics/cv.json", "2d.auc_mean"),
        ("metrics/ingest.json", "patients"),
        ("metrics/train_2d.json", "train_loss_mean"),
    ]
    assert (rows[0].old, rows[0].new, rows[0].change) == ("0.8", "0.9", "0.1")
    assert (rows[2].old, rows[2].change) == ("-", "-")


def test_markdown_table_escapes_pipes_and_has_one_row_per_entry() -> None:
    table = markdown_table(["a", "b"], [("x|y", "1"), ("z", "2")])
    lines = table.splitlines()
    assert lines[0] == "| a | b |"
    assert lines[2] == "| x\\|y | 1 |"
    assert len(lines) == 4


def test_metrics_section_says_so_when_nothing_changed() -> None:
    assert "No metric changed" in metrics_section({}, "main", "workspace", all_metrics=False)


# --- DVC's plot JSON ----------------------------------------------------------------------------------


def test_parse_plots_reads_vega_and_image_entries(tmp_path: Path) -> None:
    image = tmp_path / "dvc_plots" / "static" / "main_plots_roc.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(render_png(ROC_SPEC, scale=1))
    doc = {
        "data": {
            "roc": [{"type": "vega", "revisions": ["workspace", "main"], "content": ROC_SPEC}],
            "plots/roc.png": [
                {"type": "image", "revisions": ["main"], "url": "dvc_plots/static/main_plots_roc.png"}
            ],
        }
    }
    plots = parse_plots(doc, root=tmp_path)
    assert [p.id for p in plots] == ["roc", "plots/roc.png"]
    assert plots[0].title == "ROC </script> test"
    assert plots[0].revisions == ("workspace", "main")
    assert plots[1].image == image
    assert plots[1].file_stem == "plots_roc_png_main"

    written = write_pngs(plots, tmp_path / "out")
    assert sorted(p.name for p in written.values()) == ["plots_roc_png_main.png", "roc.png"]
    assert written[plots[1]].read_bytes() == image.read_bytes()


def test_slug_keeps_only_safe_characters() -> None:
    assert slug("plots/roc/2d.csv") == "plots_roc_2d_csv"
    assert slug("///") == "plot"


def test_vegalite_version_follows_the_schema_major() -> None:
    version = vegalite_version(ROC_SPEC)
    assert version is not None and version.startswith("5.")
    assert vegalite_version({"mark": "line"}) is None


def test_for_static_image_ticks_checkboxes_without_touching_the_original() -> None:
    spec = {
        "params": [{"name": "showValues", "bind": {"input": "checkbox"}}, {"name": "grid", "bind": "scales"}]
    }
    static = for_static_image(spec)
    assert static["params"][0]["value"] is True
    assert "value" not in static["params"][1]
    assert "value" not in spec["params"][0]


# --- rendering ------------------------------------------------------------------------------------------


def test_render_png_scales_with_the_spec_size() -> None:
    one = _png(render_png(ROC_SPEC, scale=1))
    two = _png(render_png(ROC_SPEC, scale=2))
    assert one.width > 100 and one.height > 80  # the plot area plus axes, title and legend
    assert abs(two.width - 2 * one.width) <= 2 and abs(two.height - 2 * one.height) <= 2
    # a line chart is not blank: many distinct colours (lines, axes, anti-aliasing)
    assert len(two.convert("RGB").getcolors(maxcolors=1 << 20)) > 20


def test_offline_html_embeds_libraries_specs_and_images_inline(tmp_path: Path) -> None:
    image = tmp_path / "confusion.png"
    image.write_bytes(render_png(ROC_SPEC, scale=1))
    plots = [
        Plot("roc", "ROC", ("main", "workspace"), spec=ROC_SPEC),
        Plot("plots/confusion.png", "plots/confusion.png", ("main",), image=image),
    ]
    page = offline_html(plots, title="t")

    assert remote_references(page) == []
    assert "window.vegaEmbed=" in page  # Vega-Embed defined inline, not fetched
    assert "data:image/png;base64," in page
    specs = json.loads(re.search(r"const specs = (.*);\n", page).group(1))
    assert list(specs.values()) == [ROC_SPEC]
    assert "ROC </script> test" not in page  # a spec cannot close its <script> early

    node = shutil.which("node")
    if node:  # where Node.js is installed, check that every inline script is valid JavaScript
        for index, script in enumerate(re.findall(r"<script[^>]*>(.*?)</script>", page, re.S)):
            path = tmp_path / f"script{index}.js"
            path.write_text(script)
            subprocess.run([node, "--check", str(path)], check=True, capture_output=True)


def test_remote_references_finds_dvc_cdn_scripts_and_the_offline_template_has_none(tmp_path: Path) -> None:
    datapoints = [{"x": "1", "y": "2", "rev": "main"}, {"x": "2", "y": "3", "rev": "main"}]
    renderer = VegaRenderer(datapoints, "loss", x="x", y="y")

    default_page = Path(render_html([renderer], tmp_path / "default.html")).read_text()
    remote = remote_references(default_page)
    assert remote and all("cdn.jsdelivr.net" in r for r in remote)

    template = tmp_path / "offline_template.html"
    template.write_text(offline_dvc_template())
    assert "{plot_divs}" in template.read_text() and "{scripts}" not in template.read_text()
    offline_page = Path(
        render_html([VegaRenderer(datapoints, "loss", x="x", y="y")], tmp_path / "offline.html", template)
    ).read_text()
    assert remote_references(offline_page) == []
    assert "vegaEmbed('#loss'" in offline_page


def test_remote_references_ignores_links_and_inline_scripts() -> None:
    page = (
        '<a href="https://dvc.org">docs</a><script>const u = "https://x";</script>'
        '<img src="data:image/png;base64,AA"><link rel="stylesheet" href="//cdn.example/s.css">'
    )
    assert remote_references(page) == ["<link href=//cdn.example/s.css>"]


# --- paired comparison of two revisions' predictions (a temporary Git repository, no DVC needed) -------

CV_PATH = "metrics/cv_predictions.csv"
HELD_OUT_PATH = "metrics/predictions.csv"
PAIRED_HEADER = "| Model | Predictions | Patients |"


# The hand examples of tests/test_paired.py, as patient files. Patients p1..p6, labels 1, 0, 1, 0, 1, 0.
PATIENTS = [f"p{i}" for i in range(1, 7)]
LABELS = [1, 0, 1, 0, 1, 0]
HAND_A = [0.8, 0.7, 0.6, 0.3, 0.4, 0.2]  # AUC 7/9
HAND_B = [0.9, 0.5, 0.5, 0.6, 0.5, 0.1]  # AUC 2/3; B - A: se sqrt(29)/18, z -2/sqrt(29), p 0.7103
CONSTANT = [0.5] * 6  # AUC 1/2
# positives 0.9, 0.8, 0.3 and negatives 0.4, 0.2, 0.1: AUC 8/9; minus CONSTANT: +7/18 = 0.389,
# se sqrt(2)/9 = 0.1571, 95 % CI 0.389 -+ 1.96 * 0.1571 = [0.081, 0.697], z 7/(2 sqrt 2), p 0.0133
NEAR_PERFECT = [0.9, 0.4, 0.8, 0.2, 0.3, 0.1]


def _predictions_csv(
    by_model: dict[str, list[float]], fold: bool = False, patients: list[str] = PATIENTS
) -> str:
    """A predictions file of ``patients`` (labels :data:`LABELS`); ``fold`` adds ``fold`` and an extra
    column, as the out-of-fold file has."""
    frames = [
        pd.DataFrame({"patient": patients, "label": LABELS, "score": scores, "model": model})
        for model, scores in by_model.items()
    ]
    frame = pd.concat(frames, ignore_index=True)
    if fold:
        frame = frame.assign(fold=frame.index % 3, extra="x")
    return frame.to_csv(index=False)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)


def _commit(repo: Path, tag: str, files: dict[str, str | None]) -> None:
    for path, text in files.items():
        if text is None:
            _git(repo, "rm", "-q", path)
        else:
            (repo / path).parent.mkdir(parents=True, exist_ok=True)
            (repo / path).write_text(text)
            _git(repo, "add", path)
    _git(repo, "commit", "-qm", tag)
    _git(repo, "tag", tag)


@pytest.fixture
def predictions_repo(tmp_path: Path) -> Path:
    """Commits ``base``, ``head`` (hand examples), ``cohort`` (other 2d patients), ``nopred``."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "t@example.invalid")
    _git(repo, "config", "user.name", "t")
    _commit(
        repo,
        "base",
        {
            CV_PATH: _predictions_csv({"2d": HAND_A, "3d": CONSTANT}, fold=True),
            HELD_OUT_PATH: _predictions_csv({"2d": HAND_A, "3d": NEAR_PERFECT}),
        },
    )
    _commit(
        repo,
        "head",
        {
            CV_PATH: _predictions_csv({"2d": HAND_A, "3d": NEAR_PERFECT}, fold=True),
            HELD_OUT_PATH: _predictions_csv({"2d": HAND_B, "3d": CONSTANT}),
        },
    )
    other = [f"q{i}" for i in range(1, 7)]
    held_out = (
        _predictions_csv({"2d": HAND_B}, patients=other)
        + _predictions_csv({"3d": CONSTANT}).split("\n", 1)[1]
    )
    _commit(repo, "cohort", {HELD_OUT_PATH: held_out})
    _commit(repo, "nopred", {HELD_OUT_PATH: None})
    return repo


def _paired_rows(section: str) -> list[list[str]]:
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(PAIRED_HEADER))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_paired_section_shows_delong_rows_with_hand_computed_numbers(predictions_repo: Path) -> None:
    section = paired_section("base", "head", predictions_repo)
    assert section.startswith("## Is the change real? (paired on the same patients)")
    assert "| Model | Predictions | Patients | AUC base | AUC head | ΔAUC [95% CI] | p | Verdict |" in section
    assert "DeLong" in section and "held-out set is small (6 patients per model)" in section
    assert _paired_rows(section) == [
        # the same out-of-fold scores at both revisions: exactly no change
        [
            "2d",
            "out-of-fold",
            "6 (3 metastases)",
            "0.778",
            "0.778",
            "+0.000 [+0.000, +0.000]",
            "1.000",
            "within noise",
        ],
        # 2/3 - 7/9 = -1/9, CI -1/9 -+ 1.96 sqrt(29)/18 = [-0.697, +0.475], p 0.710
        [
            "2d",
            "held-out",
            "6 (3 metastases)",
            "0.778",
            "0.667",
            "-0.111 [-0.697, +0.475]",
            "0.710",
            "within noise",
        ],
        # 8/9 - 1/2 = +7/18, CI [+0.081, +0.697], p 0.013
        [
            "3d",
            "out-of-fold",
            "6 (3 metastases)",
            "0.500",
            "0.889",
            "+0.389 [+0.081, +0.697]",
            "0.013",
            "better",
        ],
        ["3d", "held-out", "6 (3 metastases)", "0.889", "0.500", "-0.389 [-0.697, -0.081]", "0.013", "worse"],
    ]


def test_paired_section_compares_the_workspace_files_on_disk(predictions_repo: Path) -> None:
    # the working tree is at `nopred` (no held-out file): write head's held-out predictions, uncommitted
    (predictions_repo / HELD_OUT_PATH).write_text(_predictions_csv({"2d": HAND_B, "3d": CONSTANT}))
    rows = _paired_rows(paired_section("base", "workspace", predictions_repo))
    assert rows[1][:6] == ["2d", "held-out", "6 (3 metastases)", "0.778", "0.667", "-0.111 [-0.697, +0.475]"]
    assert rows[0][5] == "+0.000 [+0.000, +0.000]"  # out-of-fold unchanged since `cohort`


def test_paired_section_reads_a_dvc_experiment_by_name(predictions_repo: Path) -> None:
    # DVC keeps an experiment as a Git ref refs/exps/<2 hex>/<rest of the baseline sha>/<name>
    _git(predictions_repo, "update-ref", "refs/exps/ab/cdef/my-exp", "head")
    rows = _paired_rows(paired_section("base", "my-exp", predictions_repo))
    assert rows[2][5:] == ["+0.389 [+0.081, +0.697]", "0.013", "better"]


def test_paired_section_says_when_patients_differ(predictions_repo: Path) -> None:
    rows = _paired_rows(paired_section("head", "cohort", predictions_repo))
    assert rows[1] == ["2d", "held-out", "-", "-", "-", "-", "-", "not comparable: different patients"]
    assert rows[3][1:] == [
        "held-out",
        "6 (3 metastases)",
        "0.500",
        "0.500",
        "+0.000 [+0.000, +0.000]",
        "1.000",
        "within noise",
    ]


def test_paired_rows_say_when_labels_differ_or_a_class_is_missing() -> None:
    base = pd.read_csv(io.StringIO(_predictions_csv({"2d": HAND_A})))
    relabelled = base.assign(label=1 - base["label"])
    assert [r.verdict for r in pair_predictions(base, relabelled, "held-out")] == [
        "not comparable: different labels"
    ]
    one_class = base.assign(label=1)
    (row,) = pair_predictions(one_class, one_class, "held-out")
    assert row.test is None and row.verdict.startswith("not testable: DeLong's test needs at least 2")
    head_3d = pd.read_csv(io.StringIO(_predictions_csv({"3d": HAND_A})))
    assert [r.verdict for r in pair_predictions(base, pd.concat([base, head_3d]), "held-out")] == [
        "within noise",
        "not comparable: no 3d predictions at base",
    ]


def test_paired_section_notes_prediction_files_absent_at_both_revisions(predictions_repo: Path) -> None:
    section = paired_section("nopred", "nopred", predictions_repo)
    assert (
        f"Neither revision has `{HELD_OUT_PATH}` or `metrics/external_predictions.csv`: no paired" in section
    )
    assert [row[1] for row in _paired_rows(section)] == ["out-of-fold", "out-of-fold"]


def _report_cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metastases.compare.report", *args, "--out", str(repo / "report")],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )


def test_report_cli_gives_one_error_line_for_a_revision_without_predictions(predictions_repo: Path) -> None:
    done = _report_cli(predictions_repo, "--base", "nopred", "--head", "head")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: metrics/predictions.csv not found at revision nopred: "
        "run dvc repro there and commit its metrics"
    ]
    assert not (predictions_repo / "report").exists()

    done = _report_cli(predictions_repo, "--base", "no-such-rev", "--head", "head")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("error: unknown revision 'no-such-rev'")


def _dvc_repo(tmp_path: Path) -> Path:
    """An empty Git + DVC repository (the real CLIs) for report tests."""
    repo = tmp_path / "dvc_repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "t@example.invalid")
    _git(repo, "config", "user.name", "t")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, capture_output=True)
    _git(repo, "add", ".dvc")
    return repo


@pytest.mark.slow
def test_report_opens_with_the_paired_section_in_a_dvc_repository(tmp_path: Path) -> None:
    repo = _dvc_repo(tmp_path)
    _commit(
        repo,
        "base",
        {CV_PATH: _predictions_csv({"2d": HAND_A}), HELD_OUT_PATH: _predictions_csv({"2d": HAND_A})},
    )
    _commit(repo, "head", {HELD_OUT_PATH: _predictions_csv({"2d": HAND_B})})
    done = _report_cli(repo, "--base", "base", "--head", "head")
    assert done.returncode == 0, done.stderr
    report = (repo / "report" / "report.md").read_text()
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Is the change real? (paired on the same patients)"
    assert "## Params" in headings[1]
    assert [row[5] for row in _paired_rows(report)] == ["+0.000 [+0.000, +0.000]", "-0.111 [-0.697, +0.475]"]


def test_report_shows_the_evidence_montage_of_each_revision(tmp_path: Path) -> None:
    repo = _dvc_repo(tmp_path)
    predictions = {CV_PATH: _predictions_csv({"2d": HAND_A}), HELD_OUT_PATH: _predictions_csv({"2d": HAND_A})}
    _commit(repo, "base", predictions)
    picture = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # any bytes: the report copies them as they are
    (repo / "plots").mkdir(exist_ok=True)
    (repo / "plots" / "evidence.png").write_bytes(picture)
    done = _report_cli(repo, "--base", "base", "--head", "workspace")
    assert done.returncode == 0, done.stderr
    report = (repo / "report" / "report.md").read_text()
    section = report[report.index("## Where the models looked") :]
    assert "### base `base`\n\nNo evidence montage at this revision." in section
    assert "![evidence, head](evidence_head.png)" in section
    assert (repo / "report" / "evidence_head.png").read_bytes() == picture


def test_external_predictions_at_one_revision_only_are_a_row_not_an_error(predictions_repo: Path) -> None:
    """A base from before external validation (or a run without a second site) has no external
    predictions: the head's external rows say so; the other predictions are still paired."""
    head = {
        CV_PATH: _predictions_csv({"2d": HAND_A, "3d": NEAR_PERFECT}, fold=True),
        HELD_OUT_PATH: _predictions_csv({"2d": HAND_B, "3d": CONSTANT}),
    }
    external = _predictions_csv({"3d": HAND_A})
    _commit(predictions_repo, "second", {**head, "metrics/external_predictions.csv": external})
    rows = {
        (row[0], row[1]): row[-1] for row in _paired_rows(paired_section("head", "second", predictions_repo))
    }
    assert rows[("3d", "external")] == "not comparable: no external cohort at head"
    assert rows[("2d", "held-out")].startswith("within noise")  # the same held-out scores at both
    # an empty file (the pipeline without a second site) counts as no cohort
    _commit(predictions_repo, "empty", {"metrics/external_predictions.csv": "patient,label,score,model\n"})
    assert "no external cohort at empty" in paired_section("empty", "second", predictions_repo)
