"""The allowed import edges between bitalloc's sub-packages, read from the source (AST only,
nothing imported or executed).

Layers, from the bottom: ``kernels``, ``models`` and ``nn`` know no other part of bitalloc;
the search core types (``search/`` without its facades) sit on ``nn``; ``solvers`` see only
the search types and never torch; ``backends`` and ``data`` build on those; ``sensitivity``
prices with ``backends``; the facades (``search/api.py``, ``oneshot.py``, ``pipeline.py`` and
the package's ``__init__``) tie everything together, and only ``cli`` and ``studies`` sit above
them. A new edge must be added here on purpose, which is the point.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "bitalloc"
FACADES = {"__init__", "api", "oneshot", "pipeline"}  # modules of search/ that tie it together

ALLOWED: dict[str, set[str]] = {
    "defaults": set(),
    "kernels": set(),
    "models": set(),
    "nn": set(),
    "search": {"nn"},
    "solvers": {"search"},
    "data": {"models", "nn", "search"},
    "toolkits": {"models", "search"},
    "backends": {"kernels", "models", "nn", "search", "toolkits"},
    "sensitivity": {"backends", "nn", "search"},
    "search.facade": {
        "backends",
        "bitalloc",
        "defaults",
        "models",
        "nn",
        "search",
        "sensitivity",
        "solvers",
    },
    "evaluate": {"backends", "data", "models", "search", "search.facade"},
    "validate": {"data", "search", "search.facade", "solvers"},
    "studies": {"cli", "data", "defaults", "models", "search", "search.facade", "solvers"},
    "cli": {
        "backends",
        "bitalloc",
        "defaults",
        "data",
        "evaluate",
        "models",
        "search",
        "search.facade",
        "solvers",
        "studies",
        "toolkits",
        "validate",
    },
    "bitalloc": {"search.facade", "search", "cli"},  # bitalloc/__init__.py, __main__.py
}


def _layer(parts: list[str]) -> str:
    """The layer of module path ``parts`` (relative to the package, no ``.py``)."""
    if not parts or parts[0] in {"__init__", "__main__", "__version__"}:
        return "bitalloc"
    if parts[0] == "search":
        return "search.facade" if len(parts) < 2 or parts[1] in FACADES else "search"
    return parts[0]


def _targets(node: ast.AST, parts: list[str]) -> list[list[str]]:
    """Module paths inside bitalloc that an import node names."""
    if isinstance(node, ast.Import):
        return [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == "bitalloc"]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level == 0:
        mod = (node.module or "").split(".")
        base = mod[1:] if mod[0] == "bitalloc" else None
        if base is None:
            return []
    else:
        package = parts[:-1]
        base = package[: len(package) - (node.level - 1)] + (
            node.module.split(".") if node.module else []
        )
    if node.module is None or (node.level == 0 and len(base) == 0):
        return [base + [a.name] for a in node.names]
    return [base]


def _edges() -> dict[str, dict[str, set[str]]]:
    edges: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        source = _layer(parts)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for target in _targets(node, parts):
                layer = _layer(target)
                if layer != source:
                    edges[source][layer].add(str(path.relative_to(ROOT)))
    return edges


EDGES = _edges()


def test_every_layer_is_declared() -> None:
    found = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    found |= {p.stem for p in ROOT.glob("*.py") if not p.stem.startswith("__")}
    declared = set(ALLOWED) - {"search.facade", "bitalloc"}
    assert found == declared


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_follow_the_layers(layer: str) -> None:
    extra = {
        t: sorted(files) for t, files in EDGES.get(layer, {}).items() if t not in ALLOWED[layer]
    }
    assert extra == {}, f"{layer} imports layers it must not (target: files): {extra}"


def test_the_scan_sees_known_edges() -> None:
    # guards the scanner itself: these edges exist today, so a scan that finds nothing fails
    assert "backends/rtn.py" in EDGES["backends"]["kernels"] | EDGES["backends"]["search"]
    assert "search/api.py" in EDGES["search.facade"]["solvers"]
    assert "sensitivity/base.py" in EDGES["sensitivity"]["backends"]


def test_solvers_never_import_torch() -> None:
    offenders = []
    for path in sorted((ROOT / "solvers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            if any(n.split(".")[0] in {"torch", "triton"} for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
