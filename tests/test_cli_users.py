"""``openmaas users``: the first operator made by the CLI, members and their roles, all
audited as the CLI's user."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from openmaas.cli import main

PASSWORD = "correct horse battery"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("OPENMAAS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENMAAS_EMBEDDED_MODELS", "false")
    return CliRunner()


def test_an_operator_and_a_member_made_by_the_cli(cli: CliRunner) -> None:
    made = cli.invoke(
        main,
        ["users", "create", "--email", "Ops@Example.com", "--operator", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    assert made.exit_code == 0, made.output
    assert "ops@example.com\toperator" in made.output
    assert cli.invoke(main, ["orgs", "create", "acme"]).exit_code == 0
    added = cli.invoke(
        main,
        ["users", "add-member", "--email", "ops@example.com", "--org", "acme", "--role", "admin"],
    )
    assert added.exit_code == 0, added.output
    listed = cli.invoke(main, ["users", "list"])
    assert "ops@example.com\tyes\tacme:admin" in listed.output
    audit = cli.invoke(main, ["audit"]).output
    assert "user.create" in audit and "member.set" in audit and PASSWORD not in audit


def test_a_taken_email_a_short_password_or_no_terminal_is_refused(cli: CliRunner) -> None:
    create = ["users", "create", "--email", "a@example.com", "--password-stdin"]
    assert cli.invoke(main, create, input=PASSWORD + "\n").exit_code == 0
    again = cli.invoke(main, [*create[:3], "A@EXAMPLE.COM", "--password-stdin"], input=PASSWORD)
    assert again.exit_code == 1 and "already exists" in again.output
    short = cli.invoke(main, [*create[:3], "b@example.com", "--password-stdin"], input="short\n")
    assert short.exit_code == 1 and "at least 10" in short.output
    asked = cli.invoke(main, create[:4])  # no terminal to ask on
    assert asked.exit_code == 2 and "--password-stdin" in asked.output


def test_an_unknown_role_is_refused(cli: CliRunner) -> None:
    added = cli.invoke(
        main, ["users", "add-member", "--email", "x@example.com", "--org", "o", "--role", "god"]
    )
    assert added.exit_code == 2 and "owner" in added.output
