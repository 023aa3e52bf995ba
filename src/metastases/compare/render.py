"""Render DVC's plots offline: PNG files and one self-contained HTML page, with vl-convert's Vega engine.

``dvc plots show --json`` / ``dvc plots diff --json`` return, per plot id, the Vega-Lite spec DVC itself
draws (its template filled in, the data of every revision inlined). Rendering those specs with
vl-convert-python gives pictures identical to DVC's HTML without a browser, and an HTML page that carries
the Vega, Vega-Lite and Vega-Embed scripts inline instead of loading them from a CDN, so it also opens on
an air-gapped network.
"""

from __future__ import annotations

import base64
import copy
import html
import json
import logging
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import vl_convert

from metastases.atomic import atomic_path, write_text

log = logging.getLogger(__name__)

PNG_SCALE = 2.0
"""Pixels per Vega-Lite unit: DVC's templates are 300 x 300 units, so PNGs are about 600 px wide."""

_EMBED_OPTIONS = {"actions": {"export": True, "source": False, "compiled": False, "editor": False}}
"""Vega-Embed menu: keep "save as PNG/SVG"; the editor action would open a remote site."""


@dataclass(frozen=True, eq=False)  # identity hash: a plot is a key of write_pngs' result
class Plot:
    """One plot of ``dvc plots show/diff --json``.

    Attributes:
        id: the plot id (a top-level ``plots:`` name in dvc.yaml, or a file path).
        title: the plot's title (its id when it has none).
        revisions: the revisions drawn in it, as DVC names them (``workspace``, ``HEAD``, a SHA, an exp).
        spec: the Vega-Lite spec with its data inlined (Vega plots), else None.
        image: an image file (image plots: one :class:`Plot` per revision), else None.
    """

    id: str
    title: str
    revisions: tuple[str, ...]
    spec: dict[str, Any] | None = None
    image: Path | None = None

    @property
    def file_stem(self) -> str:
        """A file name for this plot: its id (plus the revision for an image) with only safe characters."""
        name = self.id if self.spec is not None else f"{self.id}_{'_'.join(self.revisions)}"
        return slug(name)


def slug(name: str) -> str:
    """``name`` with every character but letters, digits, ``-`` and ``_`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "plot"


def _title(plot_id: str, spec: Mapping[str, Any]) -> str:
    title = spec.get("title")
    if isinstance(title, Mapping):
        title = title.get("text")
    return str(title) if title else plot_id


def parse_plots(doc: Mapping[str, Any], root: Path | str = ".") -> list[Plot]:
    """The plots of a ``dvc plots show/diff --json`` document, in DVC's (dvc.yaml) order.

    ``root`` is the directory DVC ran in: relative image paths are resolved against it.
    """
    plots: list[Plot] = []
    for plot_id, entries in doc.get("data", {}).items():
        for entry in entries:
            revisions = tuple(entry.get("revisions", ()))
            if entry.get("type") == "vega":
                spec = entry["content"]
                plots.append(Plot(plot_id, _title(plot_id, spec), revisions, spec=spec))
            elif entry.get("type") == "image":
                plots.append(Plot(plot_id, plot_id, revisions, image=Path(root) / entry["url"]))
            else:
                log.warning("skipping plot %s of unknown type %r", plot_id, entry.get("type"))
    return plots


def vegalite_version(spec: Mapping[str, Any]) -> str | None:
    """The newest Vega-Lite bundled with vl-convert of the spec's ``$schema`` major version (DVC: v5).

    None (vl-convert's default) when the spec names no version or none of that major is bundled.
    """
    match = re.search(r"vega-lite/v(\d+)", str(spec.get("$schema", "")))
    if not match:
        return None
    same_major = [v for v in vl_convert.get_vegalite_versions() if v.split(".")[0] == match.group(1)]
    return max(same_major, key=lambda v: tuple(int(p) for p in v.split("."))) if same_major else None


def for_static_image(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``spec`` with every checkbox-bound param switched on.

    A PNG has no checkbox to tick: DVC's confusion template hides the cell counts behind one
    (``showValues``), and a reviewer reading the picture wants them.
    """
    static = copy.deepcopy(dict(spec))
    for param in static.get("params", []):
        bind = param.get("bind") if isinstance(param, dict) else None
        if isinstance(bind, Mapping) and bind.get("input") == "checkbox":
            param["value"] = True
    return static


def render_png(spec: Mapping[str, Any], scale: float = PNG_SCALE) -> bytes:
    """PNG bytes of a Vega-Lite spec (data inlined), rendered offline; ``scale`` pixels per unit."""
    return vl_convert.vegalite_to_png(
        for_static_image(spec), vl_version=vegalite_version(spec), scale=scale, allowed_base_urls=[]
    )


def write_pngs(plots: Iterable[Plot], out_dir: Path, scale: float = PNG_SCALE) -> dict[Plot, Path]:
    """Write each plot to ``out_dir/<file_stem>.png`` (image plots are copied); return plot -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[Plot, Path] = {}
    for plot in plots:
        path = out_dir / f"{plot.file_stem}.png"
        if plot.spec is not None:
            png = render_png(plot.spec, scale)
            with atomic_path(path) as tmp:
                tmp.write_bytes(png)
        elif plot.image is not None and plot.image.is_file():
            path = path.with_suffix(plot.image.suffix or ".png")
            with atomic_path(path) as tmp:
                shutil.copyfile(plot.image, tmp)
        else:
            log.warning("plot %s has no data to render; skipped", plot.id)
            continue
        written[plot] = path
    return written


def _script_json(value: Any) -> str:
    """JSON safe inside an HTML ``<script>``: ``</`` cannot close the element early."""
    return json.dumps(value).replace("</", "<\\/")


def javascript_bundle(plots: Sequence[Plot] = ()) -> str:
    """Vega, Vega-Lite and Vega-Embed as one inline script (about 0.9 MB), the version DVC's specs need.

    It defines the globals ``vega``, ``vegaLite`` and ``vegaEmbed``.
    """
    versions = [vegalite_version(p.spec) for p in plots if p.spec is not None]
    # vl-convert's stub marks ``snippet`` required; at run time it defaults to None (the globals above)
    return vl_convert.javascript_bundle(  # type: ignore[call-arg]
        vl_version=next((v for v in versions if v), None)
    )


_STYLE = """
    body { font-family: sans-serif; margin: 2em; }
    .plot { display: inline-block; vertical-align: top; margin: 1em; }
    .plot img { max-width: 640px; }
"""


def offline_html(plots: Sequence[Plot], title: str = "DVC plots") -> str:
    """One self-contained HTML page drawing ``plots`` (interactive Vega-Embed; images inlined as data URIs).

    No script, style or image is loaded from anywhere: the page works with the network off.
    """
    divs: list[str] = []
    specs: dict[str, dict[str, Any]] = {}
    for index, plot in enumerate(plots):
        div_id = f"plot-{index}-{slug(plot.id)}"
        caption = f"{html.escape(plot.title)} ({html.escape(', '.join(plot.revisions))})"
        if plot.spec is not None:
            specs[div_id] = plot.spec
            divs.append(f'<div class="plot" id="{div_id}" title="{caption}"></div>')
        elif plot.image is not None and plot.image.is_file():
            data = base64.b64encode(plot.image.read_bytes()).decode("ascii")
            mime = (
                "image/svg+xml" if plot.image.suffix == ".svg" else f"image/{plot.image.suffix[1:] or 'png'}"
            )
            divs.append(
                f'<div class="plot" id="{div_id}"><p>{caption}</p>'
                f'<img alt="{caption}" src="data:{mime};base64,{data}"></div>'
            )
    body = (
        "\n".join(divs)
        if divs
        else "<p>No plots: does dvc.yaml declare any, and have they been produced?</p>"
    )
    return f"""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
<script type="text/javascript">
{javascript_bundle(plots)}
</script>
</head>
<body>
<h1>{html.escape(title)}</h1>
{body}
<script type="text/javascript">
const specs = {_script_json(specs)};
const options = {_script_json(_EMBED_OPTIONS)};
for (const [id, spec] of Object.entries(specs)) {{
  vegaEmbed("#" + id, spec, options).catch(console.error);
}}
</script>
</body>
</html>
"""


def offline_dvc_template() -> str:
    """An HTML template for ``dvc plots show/diff --html-template`` that works offline.

    DVC fills ``{plot_divs}`` with one ``vegaEmbed`` call per plot and ``{scripts}`` with three CDN
    ``<script src>`` tags; this template has the libraries inline and no ``{scripts}`` placeholder.
    ``{refresh_tag}`` (dvc_render's auto-refreshing pages) and DVC's table style are kept, as in DVC's page.
    The project's ``.dvc/config`` names it (``plots.html_template``); ``make install`` writes it.
    """
    bundle = vl_convert.javascript_bundle(  # type: ignore[call-arg]  # see javascript_bundle above
        vl_version=max(
            (v for v in vl_convert.get_vegalite_versions() if v.startswith("5.")),
            key=lambda v: tuple(int(p) for p in v.split(".")),
        )
    )
    return f"""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{{refresh_tag}}
<title>DVC Plot</title>
<script type="text/javascript">
{bundle}
</script>
<style>{_STYLE}    table {{ border-spacing: 15px; }}
</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


class _RemoteReferenceFinder(HTMLParser):
    """Collects ``src``/``href`` of ``script``, ``link``, ``img``, ``iframe`` that point off this machine."""

    TAGS = frozenset({"script", "link", "img", "iframe", "embed", "object", "source"})

    def __init__(self) -> None:
        super().__init__()
        self.remote: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.TAGS:
            return
        for name, value in attrs:
            if name in {"src", "href", "data"} and value and re.match(r"\s*(https?:)?//", value, re.I):
                self.remote.append(f"<{tag} {name}={value}>")


def remote_references(page: str) -> list[str]:
    """The scripts, styles, images and frames an HTML page would fetch over the network (empty: offline)."""
    finder = _RemoteReferenceFinder()
    finder.feed(page)
    finder.close()
    return finder.remote


def write_offline_html(path: Path, plots: Sequence[Plot], title: str) -> Path:
    """Write :func:`offline_html` atomically to ``path``."""
    page = offline_html(plots, title)
    if remote := remote_references(page):
        raise RuntimeError(f"offline page would load remote resources: {remote}")
    write_text(path, page)
    return path
