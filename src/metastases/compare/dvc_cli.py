"""Run the ``dvc`` CLI of this environment and parse its ``--json`` output.

The CLI rather than DVC's Python API: its JSON is the documented, stable surface, and the numbers a
report shows are then exactly those ``dvc metrics diff`` prints.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metastases.errors import UserError

log = logging.getLogger(__name__)

WORKSPACE = "workspace"
"""DVC's name for the working tree (uncommitted outputs) in diffs."""


def dvc_env() -> dict[str, str]:
    """The environment with DVC's network traffic off (analytics; update checks are in .dvc/config)."""
    return {**os.environ, "DVC_NO_ANALYTICS": "1"}


def run_dvc(args: Sequence[str], repo: Path | str = ".") -> str:
    """Run ``dvc ARGS`` in ``repo`` with this interpreter's DVC; return stdout.

    A failing command (unknown revision, not a DVC repository, ...) raises :class:`UserError` with DVC's
    own last error line.
    """
    cmd = [sys.executable, "-m", "dvc", *args]
    log.debug("running %s in %s", " ".join(cmd), repo)
    done = subprocess.run(cmd, cwd=repo, env=dvc_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise UserError(f"`dvc {' '.join(args)}` failed in {Path(repo).resolve()}: {reason}")
    return done.stdout


def dvc_json(args: Sequence[str], repo: Path | str = ".") -> Any:
    """Run ``dvc ARGS --json`` and parse its output."""
    out = run_dvc([*args, "--json"], repo)
    return json.loads(out) if out.strip() else {}


def revisions(base: str, head: str) -> list[str]:
    """The positional revisions of ``dvc * diff`` comparing ``base`` to ``head`` (the workspace if so)."""
    return [base] if head == WORKSPACE else [base, head]


def metrics_diff(
    base: str,
    head: str = WORKSPACE,
    repo: Path | str = ".",
    *,
    all_: bool = False,
    targets: Sequence[str] = (),
) -> dict:
    """``dvc metrics diff``: ``{metrics_file: {"a.b.key": {"old": x, "new": y, "diff": y - x}}}``.

    Only changed metrics unless ``all_``; metrics missing on one side have no ``"diff"``. ``targets``:
    these files instead of the declared metrics (any JSON file; one absent at a revision is all ``None``).
    """
    args = ["metrics", "diff", *revisions(base, head), *(["--all"] if all_ else [])]
    return dvc_json([*args, *(["--targets", *targets] if targets else [])], repo)


def params_diff(base: str, head: str = WORKSPACE, repo: Path | str = ".") -> dict:
    """``dvc params diff``: ``{params_file: {"section.key": {"old": x, "new": y, ...}}}``, changed only."""
    return dvc_json(["params", "diff", *revisions(base, head)], repo)


def plots_json(revs: Sequence[str] = (), repo: Path | str = ".", image_dir: Path | None = None) -> dict:
    """``dvc plots show --json`` (no ``revs``) or ``dvc plots diff REVS --json``.

    Returns ``{"data": {plot_id: [{"type": "vega", "revisions": [...], "content": <Vega-Lite spec with
    the data inlined>} | {"type": "image", "revisions": [rev], "url": <path>}]}, "errors": [...]}``.
    ``image_dir`` is where DVC writes the image plots of each revision (``-o``).
    """
    args = ["plots", "diff", *revs] if revs else ["plots", "show"]
    if image_dir is not None:
        args += ["-o", str(image_dir)]
    doc = dvc_json(args, repo)
    for error in doc.get("errors", []):
        log.warning(
            "dvc could not load plot %s at %s: %s",
            error.get("name", "?"),
            error.get("rev", "?"),
            error.get("msg", error.get("type", "unknown error")),
        )
    return doc
