"""Layering: the low modules (pointsup.utils, pointsup.ops, pointsup/structures.py) import
nothing from the modules built on them (data, models, losses, the entry points)."""

import ast
import pathlib

import pointsup

PACKAGE = pathlib.Path(pointsup.__file__).parent
LOW = ["utils", "ops", "structures.py"]
HIGH = ("pointsup.data", "pointsup.models", "pointsup.losses", "pointsup.supervision", "pointsup.train",
        "pointsup.evaluate", "pointsup.predict", "pointsup.inference", "pointsup.self_training")

KNOWN_UPWARD_IMPORTS: set[tuple[str, str]] = set()  # none left


def upward_imports(path: pathlib.Path) -> set[str]:
    """Modules of HIGH imported anywhere in `path`, function-level imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "pointsup":  # from pointsup import data
            modules = [f"pointsup.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        found |= {m for m in modules if any(m == high or m.startswith(high + ".") for high in HIGH)}
    return found


def test_low_modules_import_nothing_above_them():
    files = []
    for name in LOW:
        path = PACKAGE / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    assert len(files) > 5
    found = {(str(f.relative_to(PACKAGE)), module) for f in files for module in upward_imports(f)}
    assert found == KNOWN_UPWARD_IMPORTS, (
        f"new upward imports: {sorted(found - KNOWN_UPWARD_IMPORTS)}; "
        f"gone (remove from KNOWN_UPWARD_IMPORTS): {sorted(KNOWN_UPWARD_IMPORTS - found)}"
    )
