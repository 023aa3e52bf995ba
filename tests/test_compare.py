"""Unit tests of metastases.compare: DVC-style formatting, parsing DVC's plot JSON, offline rendering."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

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
from metastases.compare.report import diff_rows, format_value, markdown_table, metrics_section

# A plot of two revisions in the shape `dvc plots diff --json` gives (DVC inlines values as strings).
ROC_SPEC = {
    "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
    "data": {
        "values": [
            {"fpr": "0", "tpr": "0", "rev": "main", "filename": "2d.csv"},
            {"fpr": "0.5", "tpr": "0.8", "rev": "main", "filename": "2d.csv"},
            {"fpr": "1", "tpr": "1", "rev": "main", "filename": "2d.csv"},
            {"fpr": "0", "tpr": "0", "rev": "workspace", "filename": "2d.csv"},
            {"fpr": "0.5", "tpr": "0.9", "rev": "workspace", "filename": "2d.csv"},
            {"fpr": "1", "tpr": "1", "rev": "workspace", "filename": "2d.csv"},
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
        "metrics/train_2d.json": {"val_loss": {"old": 0.3, "new": 0.2, "diff": -0.1}},
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
        ("metrics/train_2d.json", "val_loss"),
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
