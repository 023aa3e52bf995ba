"""A stage's metrics in two files: the headline numbers DVC shows, and every number beside them.

``dvc metrics show`` prints one table whose columns are every key of every metrics file, so each stage
declares only a few headline keys as its DVC metrics (``metrics/<stage>.json``, the table fits a
terminal); everything it measured is in ``metrics/details/<stage>.json``, a plain output committed to Git
(``make metrics`` prints both models' numbers side by side).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from metastases.atomic import write_json


def details_path(path: Path) -> Path:
    """Where the full metrics of the headline file ``path`` go: ``<dir>/details/<name>``."""
    return path.parent / "details" / path.name


def headline(values: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The entries of ``values`` named by dotted ``keys`` (``"3d.auc"``), nested as in ``values``; a key
    absent from ``values`` (no lesion truth, no localisation) is left out."""
    picked: dict[str, Any] = {}
    for key in keys:
        node: Any = values
        parts = key.split(".")
        for part in parts:
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None:
            continue
        target = picked
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = node
    return picked


def write_metrics(path: Path, values: Mapping[str, Any], keys: Iterable[str]) -> None:
    """``values`` in full to :func:`details_path`, its headline ``keys`` to ``path``."""
    write_json(details_path(path), values)
    write_json(path, headline(values, keys))
