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


def test_members_invitations_and_operators_from_the_cli_under_the_consoles_rules(
    cli: CliRunner,
) -> None:
    def ok(*args: str, stdin: str | None = None) -> str:
        done = cli.invoke(main, list(args), input=stdin)
        assert done.exit_code == 0, (args, done.output)
        return done.output

    assert cli.invoke(main, ["orgs", "create", "acme"]).exit_code == 0
    for email in ("own@example.com", "pat@example.com"):
        ok("users", "create", "--email", email, "--password-stdin", stdin=PASSWORD + "\n")
    ok("users", "add-member", "--email", "own@example.com", "--org", "acme", "--role", "owner")
    ok("users", "add-member", "--email", "pat@example.com", "--org", "acme", "--role", "viewer")
    ok("members", "set-role", "--org", "acme", "--user", "pat@example.com", "--role", "admin")
    assert "pat@example.com\tadmin" in ok("members", "list", "--org", "acme")
    last = cli.invoke(main, ["members", "remove", "--org", "acme", "--user", "own@example.com"])
    assert last.exit_code == 1 and "last owner" in last.output  # the console's rule
    ok("members", "remove", "--org", "acme", "--user", "pat@example.com")
    assert "pat@example.com" not in ok("members", "list", "--org", "acme")

    made = ok("invitations", "create", "--org", "acme", "--email", "x@example.com")
    invitation, token = made.split("\n")[0].split("\t")
    listed = ok("invitations", "list", "--org", "acme")
    assert f"{invitation}\tx@example.com\tmember\topen" in listed and token not in listed
    ok("invitations", "revoke", "--org", "acme", invitation)
    assert f"{invitation}\tx@example.com\tmember\trevoked" in ok(
        "invitations", "list", "--org", "acme"
    )

    ok("users", "make-operator", "pat@example.com")
    ok("users", "disable", "pat@example.com")
    assert "pat@example.com\tyes" in ok("users", "list")
    ok("users", "unmake-operator", "pat@example.com")
    ok("users", "enable", "pat@example.com")
    ok("orgs", "suspend", "acme", "--reason", "unpaid")
    ok("orgs", "resume", "acme")
    audit = ok("audit")
    for action in ("member.remove", "invitation.revoke", "user.operator", "user.disable"):
        assert action in audit
    assert "org.suspend" in audit and "org.resume" in audit
    suspensions = ok("audit", "--action", "org.s", "--actor", "cli:").splitlines()[1:]
    assert [line.split()[2] for line in suspensions] == ["org.suspend"]
