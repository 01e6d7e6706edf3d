"""The front door stays true: every setting is documented, the README shows both commands."""

from __future__ import annotations

import re
from pathlib import Path

from openmaas.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented_with_its_variable() -> None:
    documented = (ROOT / "docs" / "configuration.md").read_text()
    missing = [
        f"OPENMAAS_{name.upper()}"
        for name in Settings.model_fields
        if f"`OPENMAAS_{name.upper()}`" not in documented
    ]
    assert missing == []


def test_every_documented_variable_is_a_setting() -> None:
    """A variable in the table that no setting reads would be accepted and change nothing."""
    documented = (ROOT / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| `OPENMAAS_([A-Z_]+)`", documented, re.M)
    assert rows and [name for name in rows if name.lower() not in Settings.model_fields] == []


def test_readme_shows_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_relative_link_in_the_docs_resolves_inside_the_repository() -> None:
    broken = []
    for page in _markdown_files():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (page.parent / target).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_no_page_points_outside_the_repository() -> None:
    """A user's clone has no ``../shared``: the design lives in docs/design.md."""
    outside = [
        str(page.relative_to(ROOT)) for page in _markdown_files() if "../shared" in page.read_text()
    ]
    assert outside == []
