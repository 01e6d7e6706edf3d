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
