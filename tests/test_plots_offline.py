"""Plain ``dvc plots show`` draws every chart with the network off, through the project's offline template.

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN: on an air-gapped workstation it is blank.
``.dvc/config`` names ``plots.html_template`` (resolved against ``.dvc/``), a page with those scripts inline
that ``make install`` writes (:func:`offline_dvc_template`). The browser test copies the project's
``plots:`` definitions and their CSV files into a temporary DVC repository, runs the real ``dvc plots show``
with and without the template, opens both pages in headless Chromium with every network request failing,
and counts the charts Vega drew in the DOM. Without Chromium it skips and says how to install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from metastases.compare.render import offline_dvc_template, remote_references

ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = "sudo apt-get install -y chromium (Debian; .ci/run installs it where it can)"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SVG_ITEMS = frozenset({"path", "rect", "line", "circle", "ellipse", "polygon", "polyline", "text", "image"})
VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track"}
    | {"wbr"}
)


def _browser() -> str | None:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    return None


def _env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1"}


def _dvc(repo: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def _project_template_name() -> str:
    """The committed ``.dvc/config``'s ``plots.html_template``."""
    return _dvc(ROOT, "config", "--project", "plots.html_template").strip()


class _DrawnCharts(HTMLParser):
    """Per plot div (``<div id = "<plot id>">`` from DVC): the SVG/canvas surfaces and the drawn Vega marks
    (graphical items inside a ``role-mark`` group; axes, legends and titles are other roles)."""

    def __init__(self, plot_ids: set[str]) -> None:
        super().__init__()
        self.plot_ids = plot_ids
        self.stack: list[tuple[str, str | None, bool]] = []  # (tag, plot id, inside a role-mark group)
        self.surfaces = dict.fromkeys(plot_ids, 0)
        self.marks = dict.fromkeys(plot_ids, 0)
        self.divs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        plot, in_mark = (self.stack[-1][1], self.stack[-1][2]) if self.stack else (None, False)
        if tag == "div" and attributes.get("id") in self.plot_ids:
            plot = attributes["id"]
            self.divs.append(str(plot))
        if plot is not None:
            if tag in {"svg", "canvas"}:
                self.surfaces[plot] += 1
            if tag in SVG_ITEMS and in_mark and (tag != "path" or attributes.get("d")):
                self.marks[plot] += 1
            in_mark = in_mark or (tag == "g" and "role-mark" in (attributes.get("class") or "").split())
        if tag not in VOID:
            self.stack.append((tag, plot, in_mark))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, -1, -1):
            if self.stack[depth][0] == tag:
                del self.stack[depth:]
                return

    def drawn(self) -> set[str]:
        return {p for p in self.plot_ids if self.surfaces[p] and self.marks[p]}


def _drawn_offline(browser: str, page: Path, plot_ids: set[str], profile: Path) -> tuple[set[str], list[str]]:
    """Open ``page`` in headless Chromium with no network; return (the plots drawn, the plot divs found)."""
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # as root in a container
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            f"--user-data-dir={profile}",
            # no network: every host name fails to resolve, every http(s) request goes to a dead proxy
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=http://127.0.0.1:9",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0 and "</html>" in done.stdout, f"{browser} failed: {done.stderr[-2000:]}"
    parser = _DrawnCharts(plot_ids)
    parser.feed(done.stdout)
    parser.close()
    return parser.drawn(), parser.divs


def _copy_project_plots(repo: Path) -> set[str]:
    """A DVC repository at ``repo`` with the project's top-level ``plots:`` and their CSVs; the plot ids."""
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    plot_ids: set[str] = set()
    for entry in plots:
        for plot_id, props in entry.items():
            plot_ids.add(plot_id)
            files = [f for axis in ("x", "y") if isinstance(props.get(axis), dict) for f in props[axis]]
            assert files, f"plot {plot_id}: expected its data files as keys of x or y"
            for name in files:
                source = ROOT / name
                if not source.is_file():
                    pytest.fail(f"{name} (plot {plot_id}) is missing: plots/**/*.csv are committed")
                (repo / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, repo / name)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    _dvc(repo, "init", "-q", "--no-scm")
    for key in ("core.analytics", "core.check_update"):
        _dvc(repo, "config", key, "false")
    _dvc(repo, "config", "studio.offline", "true")
    return plot_ids


@pytest.mark.slow  # the real dvc CLI twice and a browser twice: about 5 s
def test_plain_dvc_plots_show_draws_every_chart_offline_only_with_the_template(tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip(f"Chromium is not installed (none of {', '.join(BROWSERS)} on PATH): {INSTALL_HINT}")
    repo = tmp_path / "repo"
    repo.mkdir()
    plot_ids = _copy_project_plots(repo)
    assert len(plot_ids) >= 2

    # DVC's default page: CDN scripts, nothing drawn with the network off (this test can fail)
    _dvc(repo, "plots", "show", "-o", "default")
    default_page = repo / "default" / "index.html"
    assert any("cdn.jsdelivr.net" in ref for ref in remote_references(default_page.read_text()))
    drawn, divs = _drawn_offline(browser, default_page, plot_ids, tmp_path / "profile-default")
    assert sorted(divs) == sorted(plot_ids)  # the plot divs are there ...
    assert drawn == set(), f"charts drawn offline without the template: {sorted(drawn)}"  # ... but blank

    # as the project is configured: .dvc/config names the template, relative to .dvc/, and plain
    # `dvc plots show` (no --html-template) writes dvc_plots/index.html from it
    name = _project_template_name()
    (repo / ".dvc" / name).write_text(offline_dvc_template(), encoding="utf-8")
    _dvc(repo, "config", "plots.html_template", name)
    _dvc(repo, "plots", "show")
    page = repo / "dvc_plots" / "index.html"
    assert remote_references(page.read_text()) == []
    assert "cdn" not in page.read_text().lower()
    drawn, divs = _drawn_offline(browser, page, plot_ids, tmp_path / "profile-offline")
    assert sorted(divs) == sorted(plot_ids)
    assert drawn == plot_ids, f"not drawn offline: {sorted(plot_ids - drawn)}"


def test_project_config_names_a_git_ignored_template_that_make_install_writes() -> None:
    name = _project_template_name()
    assert name and not os.path.isabs(name), "plots.html_template: a path relative to .dvc/"
    template = f".dvc/{name}"
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", template], check=False)
        assert ignored.returncode == 0, f"{template} is written by make install: it must be Git-ignored"
    if shutil.which("make"):
        # `make install` (which `make run` and `make test` depend on) rewrites the template when the code does
        dry = subprocess.run(
            ["make", "-C", str(ROOT), "-n", "-W", "src/metastases/compare/render.py", "install"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"--dvc-template {template}" in dry, dry
