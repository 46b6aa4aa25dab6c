"""Imports point down the layer list only (STYLE.md), and CONFIG.md is current."""

import ast
from pathlib import Path

import tidepost
from tidepost.config import docs

PACKAGE = Path(tidepost.__file__).parent

# Lower index = lower layer. Modules may import their own layer or below.
LAYERS = [
    {"address", "errors", "clock", "eventlog", "eventloop", "accounts", "sizes", "durable",
     "dsnparams"},
    {"model", "outcomes", "testing", "batchcodec"},
    {"config"},
    {"queue", "scheduler", "usage"},
    {"routing"},
    {"resolver", "submission"},
    {"smtp_client"},
    {"delivery"},
    {"manager", "smtp_server", "control"},
    {"node_relay", "startup"},
    {"node"},
    {"cli"},
]
# Packages on one step must not import each other (STYLE.md), except these pairs.
SAME_LAYER_ALLOWED: set[tuple[str, str]] = set()


def layer_of(component: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if component in layer)


def component(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported_components(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tidepost."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("tidepost.")}
    return found


def test_imports_point_down():
    problems = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue
        mine = component(path)
        for other in imported_components(path) - {mine}:
            if layer_of(other) > layer_of(mine):
                problems.append(f"{path.relative_to(PACKAGE)} imports {other} (a higher layer)")
            elif layer_of(other) == layer_of(mine) and (mine, other) not in SAME_LAYER_ALLOWED:
                problems.append(f"{path.relative_to(PACKAGE)} imports {other} (same layer)")
    assert problems == []


def test_config_docs_are_generated_from_the_schema():
    committed = (PACKAGE.parent.parent / "docs" / "CONFIG.md").read_text()
    assert committed == docs.render(), "run: python -m tidepost.config.docs > docs/CONFIG.md"
