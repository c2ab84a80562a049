"""The package layers import downward only (docs/ARCHITECTURE.md): a module that imports a
layer above its own fails here, naming the file, the line and both layers."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"

# Lowest first; a module may import its own layer and any layer listed before it.
LAYERS = [
    {"core", "config", "schemas"},
    {"kernels"},
    {"models"},
    {"engine"},
    {"lifecycle"},
    {"generation"},
    {"handler"},
    {"api"},
    {"main", "__main__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "app" and len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """Absolute ``app.…`` modules a file imports, anywhere in it (lazy imports too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "app":  # from app import api  → the layer is the name
                names = [f"app.{alias.name}" for alias in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def test_every_layer_is_known():
    tops = {p.stem if p.is_file() else p.name for p in APP.iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    assert tops <= set(RANK), f"add {sorted(tops - set(RANK))} to LAYERS"


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for path in sorted(APP.rglob("*.py")):
        rel = path.relative_to(APP.parent).with_suffix("")
        own = _layer(".".join(rel.parts))
        if own is None:
            continue
        for line, module in _imports(path):
            target = _layer(module)
            if target is not None and RANK[target] > RANK[own]:
                upward.append(f"{path.relative_to(APP.parent)}:{line} ({own}) imports "
                              f"{module} ({target})")
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from app.api.sse import frame\n")
    assert _imports(bad) == [(2, "app.api.sse")]
    assert RANK[_layer("app.api.sse")] > RANK[_layer("app.engine.lm.worker")]
