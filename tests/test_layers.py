"""Arrows point inward (docs/design.md, docs/architecture.md): each package imports only
the packages below it. A new import that points outward fails here, naming the module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "openmaas"

# What each top-level part of the package may import of the project (besides itself).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "aio": set(),
    "asgi": set(),
    "glm": {"core"},
    "protocols": {"core"},
    "engines": {"core", "glm", "aio"},
    "store": {"core", "aio"},
    "settings": {"core"},
    "moderation": {"core"},  # content safety: pure matching and the seam's protocol
    # feature packages, inner to outer
    "accounts": {"core", "store", "settings", "aio"},
    "billing": {"core", "store", "settings", "aio", "accounts"},
    "routing": {"core", "engines", "aio"},
    "catalog": {"core", "glm", "engines", "store", "settings", "aio", "accounts", "routing"},
    "serving": {
        "core",
        "engines",
        "aio",
        "accounts",
        "billing",
        "routing",
        "catalog",
        "moderation",
    },
    # the engine host: the settings' local models, once per machine, for the workers
    "enginehost": {"core", "engines", "protocols", "settings", "catalog", "asgi"},
    # the composition root, then the edges
    "platform": {"core", "store", "settings", "aio", "accounts", "billing", "catalog"},
}
OUTER = {"server", "cli", "__main__", "__init__"}  # may import anything inward


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("openmaas.")}
    return found


def test_every_import_points_inward() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if part in OUTER or "migrations" in path.parts:
            continue
        assert part in ALLOWED, f"{part} is not placed in a layer: add it to ALLOWED"
        for target in _imports(path) - ALLOWED[part] - {part}:
            wrong.append(f"{path.relative_to(PACKAGE)} imports openmaas.{target}")
    assert wrong == []
