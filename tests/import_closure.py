"""The modules of ``src/metastases`` a stage script imports, directly or through other project modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "metastases"


def _module_path(name: str) -> Path | None:
    """``metastases.a.b`` -> its file (module or package ``__init__``), or None outside the project."""
    parts = name.split(".")
    if parts[0] != "metastases":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_closure(script: Path) -> set[Path]:
    """Every project file ``script`` needs at run time (itself, stage helpers, library modules and the
    ``__init__`` of every package on the way), as paths relative to the repository root."""
    seen: set[Path] = set()
    todo = [script.resolve()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                found = _module_path(".".join(parts[:depth]))
                if found is not None:
                    todo.append(found)
            local = path.parent / f"{name}.py"  # stage scripts import their sibling helpers (_array_stage)
            if path.parent.name == "stages" and local.is_file():
                todo.append(local)
    return {p.relative_to(ROOT) for p in seen}


def covered(path: Path, deps: list[str]) -> bool:
    """True when ``path`` is one of ``deps`` or lies inside a directory listed there."""
    return any(path == Path(dep) or Path(dep) in path.parents for dep in deps)
