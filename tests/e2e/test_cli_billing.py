"""The billing commands of ``openmaas``, run as a user runs them, on a data directory of their
own (no server needed: the CLI writes the database the server reads)."""

from __future__ import annotations

import csv
import getpass
import io
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest


class Cli:
    def __init__(self, home: Path) -> None:
        self.env = {**os.environ, "OPENMAAS_HOME": str(home), "OPENMAAS_EMBEDDED_MODELS": "false"}

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "openmaas", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    def rows(self, *args: str) -> list[list[str]]:
        """A table command's tab-separated lines (stdout is not a terminal), header first."""
        return [line.split("\t") for line in self(*args).stdout.splitlines()]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(tmp_path_factory.mktemp("cli-billing") / "home")


def test_create_top_up_and_read_the_balance(cli: Cli) -> None:
    org_id, name = cli("orgs", "create", "acme", "--currency", "USD").stdout.split()
    assert name == "acme" and org_id.startswith("org_")
    assert ["acme", "USD"] == [r for r in cli.rows("orgs", "list") if r[1] == "acme"][0][1:3]

    topped = cli("billing", "topup", "acme", "12.50", "--id", "pay-1").stdout
    assert "12.500000 USD" in topped
    again = cli("billing", "topup", "acme", "12.50", "--id", "pay-1").stdout
    assert "Already applied" in again and "12.500000 USD" in again
    cli("billing", "promo", "acme", "1")
    cli("orgs", "set", "acme", "--credit-limit", "5")

    balance = dict(cli.rows("billing", "balance", "acme")[1:])
    assert balance["cash"] == "12.500000 USD"
    assert balance["promo"] == "1.000000 USD"
    assert balance["credit limit"] == "5.000000 USD"
    assert balance["available"] == "18.500000 USD"  # cash + credit limit + promo


def test_refusals_name_the_problem_and_change_nothing(cli: Cli) -> None:
    cli("orgs", "create", "globex")
    negative = cli("billing", "topup", "globex", "--", "-5", ok=False)
    assert negative.returncode != 0 and "'amount' must be more than zero" in negative.stderr
    inexact = cli("billing", "topup", "globex", "0.0000001", ok=False)
    assert inexact.returncode != 0 and "more than six decimals" in inexact.stderr
    unknown = cli("billing", "topup", "nobody", "1", ok=False)
    assert unknown.returncode != 0 and "No organization" in unknown.stderr
    bad_tier = cli("orgs", "set", "globex", "--tier", "Platinum", ok=False)
    assert bad_tier.returncode != 0 and "Unknown tier 'Platinum'" in bad_tier.stderr
    assert dict(cli.rows("billing", "balance", "globex")[1:])["cash"] == "0.000000 CNY"


def test_prices_set_and_list(cli: Cli) -> None:
    cli("prices", "set", "glm-4", "--input", "2", "--cached-input", "0.4", "--output", "8")
    cli(
        "prices",
        "set",
        "glm-4",
        "--input",
        "0.3",
        "--cached-input",
        "0.03",
        "--output",
        "1.2",
        "--reasoning",
        "2",
        "--currency",
        "USD",
        "--from",
        "2030-01-01",
    )
    header, *rows = cli.rows("prices", "list")
    assert header[:2] == ["model", "currency"]
    by_currency = {r[1]: r for r in rows if r[0] == "glm-4"}
    assert by_currency["CNY"][3:6] == ["2.000000", "0.400000", "8.000000"]
    assert by_currency["USD"][2].startswith("2030-01-01T00:00:00")
    assert by_currency["USD"][6] == "2.000000"


def test_tiers_list_and_set(cli: Cli) -> None:
    names = {r[0] for r in cli.rows("tiers", "list")[1:]}
    assert {"V0", "V1", "V2", "V3"} <= names
    cli("tiers", "set", "Gold", "--rpm", "100", "--concurrency", "4", "--model", "glm-4:10:-:2")
    gold = [r for r in cli.rows("tiers", "list") if r[0] == "Gold"]
    assert gold == [["Gold", "*", "100", "-", "4", "1"], ["Gold", "glm-4", "10", "-", "2", ""]]
    cli("tiers", "set", "Gold", "--rpm", "100", "--weight", "3")
    assert [r for r in cli.rows("tiers", "list") if r[0] == "Gold"] == [
        ["Gold", "*", "100", "-", "-", "3"]
    ]
    assert cli("tiers", "set", "Gold", "--weight", "0", ok=False).returncode != 0
    cli("orgs", "set", "acme", "--tier", "Gold", "--discount-bp", "500")
    assert [r for r in cli.rows("orgs", "list") if r[1] == "acme"][0][3:5] == ["Gold", "500"]


def test_packs_and_budgets(cli: Cli) -> None:
    cli("orgs", "create", "initech")
    granted = cli(
        "billing",
        "packs",
        "grant",
        "initech",
        "--model",
        "glm-4",
        "--model",
        "glm-4-air",
        "--tokens",
        "1000000",
        "--expires",
        "2099-12-31",
    ).stdout
    assert "1000000 tokens" in granted
    [row] = cli.rows("billing", "packs", "list", "initech")[1:]
    assert row[1:4] == ["glm-4,glm-4-air", "1000000", "2099-12-31T00:00:00.000Z"]
    cli("billing", "budget", "set", "org:initech", "--day", "3")
    balance = dict(cli.rows("billing", "balance", "initech")[1:])
    assert any(
        k.endswith(" day") and v == "0.000000 CNY of 3.000000 CNY" for k, v in balance.items()
    )
    cli("billing", "budget", "clear", "org:initech", "--day")
    assert not any("budget" in k for k in dict(cli.rows("billing", "balance", "initech")[1:]))
    missing = cli("billing", "budget", "clear", "org:initech", "--day", ok=False)
    assert missing.returncode != 0 and "No day budget" in missing.stderr


def test_statement_csv_adds_up_to_the_balance(cli: Cli) -> None:
    cli("orgs", "create", "hooli")
    cli("billing", "topup", "hooli", "7.25")
    cli("billing", "topup", "hooli", "0.75")
    cli("billing", "promo", "hooli", "2")
    text = cli("billing", "statement", "hooli", "--since", "2020-01-01", "--csv").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["time_utc", "request_id", "account", "counterparty", "amount", "unit"]
    cash = sum(Decimal(r["amount"]) for r in rows if r["account"].endswith(":cash"))
    promo = sum(Decimal(r["amount"]) for r in rows if r["account"].endswith(":promo"))
    balance = dict(cli.rows("billing", "balance", "hooli")[1:])
    assert f"{cash:.6f} CNY" == balance["cash"] == "8.000000 CNY"
    assert f"{promo:.6f} CNY" == balance["promo"]
    assert {r["counterparty"] for r in rows} == {"system:CNY:external", "system:CNY:promotions"}
    before = cli("billing", "statement", "hooli", "--until", "2020-01-01", "--csv").stdout
    assert before.splitlines() == ["time_utc,request_id,account,counterparty,amount,unit"]


def test_audit_names_the_unix_user(cli: Cli) -> None:
    cli("orgs", "create", "audited")
    cli("billing", "topup", "audited", "3")
    header, *rows = cli.rows("audit", "--limit", "2")
    assert header[:4] == ["time (UTC)", "actor", "action", "target"]
    assert [r[2] for r in rows] == ["billing.topup", "org.create"]
    assert {r[1] for r in rows} == {f"cli:{getpass.getuser()}"}
    assert '"balance": "3.000000"' in rows[0][5]
