"""Every administrative change leaves exactly one audit row, whichever way it is made.

The commands and routes are discovered, not listed by hand: every leaf of the ``openmaas``
command tree and every POST/PUT/PATCH/DELETE route under ``/admin/v1`` must have a case
here (a change, run and counted) or be named read-only (run, and shown to write nothing).
A new command or route without a case fails ``test_every_*_has_a_case``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from openmaas.accounts.admin import IssuedKey, NewOrganization
from openmaas.accounts.people import OrgRole, PeopleAdmin
from openmaas.accounts.people_roles import PeopleRoles
from openmaas.cli import main
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.settings import Settings
from openmaas.store.audit import read_audit

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
EMPTY_CATALOG = "models: []\n"

# -- the CLI ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """``args`` with ``{org}``, ``{key}``, ``{file}`` filled in; ``setup`` runs first."""

    args: str
    stdin: str | None = None
    setup: tuple[str, ...] = field(default_factory=tuple)


CLI_CHANGES: dict[str, Command] = {
    "orgs create": Command("orgs create globex --currency USD --credit-limit 5"),
    "orgs set": Command("orgs set {org} --tier V1 --discount-bp 100"),
    "keys create": Command("keys create --org {org} --name ci --model m --expires 2099-01-01"),
    "keys revoke": Command("keys revoke {key}"),
    "keys set-tier": Command("keys set-tier {key} --tier V0"),
    "billing topup": Command("billing topup {org} 10"),
    "billing promo": Command("billing promo {org} 2"),
    "billing packs grant": Command(
        "billing packs grant {org} --model m --tokens 100 --expires 2099-01-01"
    ),
    "billing budget set": Command("billing budget set org:{org} 5 --day"),
    "billing budget clear": Command(
        "billing budget clear org:{org} --month", setup=("billing budget set org:{org} 5 --month",)
    ),
    "prices set": Command("prices set m --input 1 --cached-input 0.5 --output 2"),
    "tiers set": Command("tiers set Gold --rpm 10 --model m:1:-:-"),
    "catalog apply": Command("catalog apply {file} --allow-empty"),
    "credentials set": Command("credentials set cloud-key", stdin="s3cret\n"),
    "credentials delete": Command("credentials delete old-key", setup=("credentials set old-key",)),
    "users create": Command(
        "users create --email new@example.com --password-stdin", stdin="correct horse battery\n"
    ),
    "users add-member": Command(
        "users add-member --email pat@example.com --org {org} --role viewer",
        setup=("users create --email pat@example.com --password-stdin",),
    ),
    "users make-operator": Command(
        "users make-operator op1@example.com",
        setup=("users create --email op1@example.com --password-stdin",),
    ),
    "users unmake-operator": Command(
        "users unmake-operator op2@example.com",
        setup=("users create --email op2@example.com --operator --password-stdin",),
    ),
    "users disable": Command(
        "users disable d1@example.com",
        setup=("users create --email d1@example.com --password-stdin",),
    ),
    "users enable": Command(
        "users enable d2@example.com",
        setup=(
            "users create --email d2@example.com --password-stdin",
            "users disable d2@example.com",
        ),
    ),
    "orgs suspend": Command("orgs suspend {org} --reason unpaid"),
    "orgs resume": Command("orgs resume {org}", setup=("orgs suspend {org}",)),
    "members set-role": Command(
        "members set-role --org {org} --user m1@example.com --role member",
        setup=(
            "users create --email m1@example.com --password-stdin",
            "users add-member --email m1@example.com --org {org} --role viewer",
        ),
    ),
    "members remove": Command(
        "members remove --org {org} --user m2@example.com",
        setup=(
            "users create --email m2@example.com --password-stdin",
            "users add-member --email m2@example.com --org {org} --role viewer",
        ),
    ),
    "invitations create": Command("invitations create --org {org} --email i1@example.com"),
    "invitations revoke": Command("invitations revoke --org {org} {invitation}"),
}
CLI_READS: dict[str, Command] = {
    "orgs list": Command("orgs list"),
    "keys list": Command("keys list"),
    "usage": Command("usage --org {org}"),
    "billing balance": Command("billing balance {org}"),
    "billing packs list": Command("billing packs list {org}"),
    "billing statement": Command("billing statement {org} --csv"),
    "prices list": Command("prices list"),
    "tiers list": Command("tiers list"),
    "audit": Command("audit"),
    "catalog check": Command("catalog check {file}"),
    "catalog show": Command("catalog show"),
    "models list": Command("models list"),
    "deployments list": Command("deployments list"),
    "credentials list": Command("credentials list"),
    "users list": Command("users list"),
    "members list": Command("members list --org {org}"),
    "invitations list": Command("invitations list --org {org}"),
}
NOT_ADMINISTRATION = {"serve"}  # starts the server; its first start is tested below


def leaf_commands(group: click.Group, prefix: str = "") -> Iterator[str]:
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from leaf_commands(command, path + " ")
        else:
            yield path


async def audit_count(settings: Settings) -> int:
    async with open_platform(settings) as platform:
        return len(await read_audit(platform.database, 100_000))


@dataclass
class CliSite:
    settings: Settings
    env: dict[str, str]
    values: dict[str, str]

    def run(self, command: str, stdin: str | None = None) -> None:
        args = command.format(**self.values).split()
        result = CliRunner().invoke(main, args, input=stdin, env=self.env, catch_exceptions=False)
        assert result.exit_code == 0, f"openmaas {command}: {result.output}"

    def audit_rows(self) -> int:
        return asyncio.run(audit_count(self.settings))


@pytest.fixture(scope="module")
def cli_site(tmp_path_factory: pytest.TempPathFactory) -> CliSite:
    root = tmp_path_factory.mktemp("audited-cli")
    settings = Settings(home=root / "home", embedded_models=False)
    catalog = root / "catalog.yaml"
    catalog.write_text(EMPTY_CATALOG)

    async def seed() -> tuple[IssuedKey, str]:
        async with open_platform(settings) as platform:
            accounts = platform.accounts_admin("test")
            await accounts.create_org(NewOrganization(name="acme"))
            roles = PeopleRoles(platform.changes("test"), platform.clock, invitation_hours=1)
            invited = await roles.invite(
                await roles.platform_access("acme"), "i0@example.com", OrgRole.VIEWER
            )
            return await accounts.issue_key("acme", "bot"), invited.id

    issued, invitation = asyncio.run(seed())
    env = {"OPENMAAS_HOME": str(settings.home), "OPENMAAS_EMBEDDED_MODELS": "false"}
    values = {"org": "acme", "key": issued.key.id, "file": str(catalog), "invitation": invitation}
    return CliSite(settings, env, values)


def test_every_cli_command_has_a_case() -> None:
    known = set(CLI_CHANGES) | set(CLI_READS) | NOT_ADMINISTRATION
    assert sorted(set(leaf_commands(main)) - known) == []  # a new command needs a case here
    assert sorted(known - set(leaf_commands(main))) == []


@pytest.mark.parametrize("name", sorted(CLI_CHANGES))
def test_each_changing_cli_command_writes_exactly_one_audit_row(
    cli_site: CliSite, name: str
) -> None:
    case = CLI_CHANGES[name]
    for command in case.setup:
        cli_site.run(command, stdin="a setup value\n")  # also a password long enough
    before = cli_site.audit_rows()
    cli_site.run(case.args, case.stdin)
    assert cli_site.audit_rows() == before + 1


@pytest.mark.parametrize("name", sorted(CLI_READS))
def test_each_reading_cli_command_writes_none(cli_site: CliSite, name: str) -> None:
    before = cli_site.audit_rows()
    cli_site.run(CLI_READS[name].args)
    assert cli_site.audit_rows() == before


# -- the admin API -------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A request (``{org}`` and ``{key}`` filled in); ``setup`` requests run first."""

    path: str
    json: object = None
    content: str | None = None
    setup: tuple[tuple[str, str, object], ...] = ()


API_CHANGES: dict[str, Call] = {
    "POST /admin/v1/orgs": Call("/admin/v1/orgs", {"name": "globex", "credit_limit": "5"}),
    "PATCH /admin/v1/orgs/{org}": Call("/admin/v1/orgs/{org}", {"tier": "V1"}),
    "POST /admin/v1/orgs/{org}/topups": Call("/admin/v1/orgs/{org}/topups", {"amount": "10"}),
    "PUT /admin/v1/orgs/{org}/suspension": Call(
        "/admin/v1/orgs/{org}/suspension", {"reason": "unpaid"}
    ),
    "DELETE /admin/v1/orgs/{org}/suspension": Call(
        "/admin/v1/orgs/{org}/suspension", setup=(("PUT", "/admin/v1/orgs/{org}/suspension", {}),)
    ),
    "POST /admin/v1/orgs/{org}/promotions": Call(
        "/admin/v1/orgs/{org}/promotions", {"amount": "2"}
    ),
    "POST /admin/v1/orgs/{org}/packs": Call(
        "/admin/v1/orgs/{org}/packs",
        {"models": ["m"], "tokens": 100, "expires_at": "2099-01-01"},
    ),
    "PUT /admin/v1/budgets/{scope}/{period}": Call(
        "/admin/v1/budgets/org:{org}/day", {"limit": "5"}
    ),
    "DELETE /admin/v1/budgets/{scope}/{period}": Call(
        "/admin/v1/budgets/org:{org}/month",
        setup=(("PUT", "/admin/v1/budgets/org:{org}/month", {"limit": "5"}),),
    ),
    "PATCH /admin/v1/keys/{key_id}": Call("/admin/v1/keys/{key}", {"tier": "V0"}),
    "POST /admin/v1/orgs/{org}/keys": Call(
        "/admin/v1/orgs/{org}/keys", {"name": "ci", "models": ["m"], "expires_at": "2099-01-01"}
    ),
    "POST /admin/v1/prices": Call(
        "/admin/v1/prices", {"model": "m", "input": "1", "cached_input": "0", "output": "2"}
    ),
    "PUT /admin/v1/tiers/{name}": Call("/admin/v1/tiers/Gold", {"rpm": 10}),
    "PUT /admin/v1/catalog": Call("/admin/v1/catalog?allow_empty=true", content=EMPTY_CATALOG),
    "PUT /admin/v1/credentials/{name}": Call(
        "/admin/v1/credentials/cloud-key", {"value": "s3cret"}
    ),
    "DELETE /admin/v1/credentials/{name}": Call(
        "/admin/v1/credentials/old-key",
        setup=(("PUT", "/admin/v1/credentials/old-key", {"value": "x"}),),
    ),
    "PATCH /admin/v1/orgs/{org}/members/{user_id}": Call(
        "/admin/v1/orgs/{org}/members/{m1}", {"role": "member"}
    ),
    "DELETE /admin/v1/orgs/{org}/members/{user_id}": Call("/admin/v1/orgs/{org}/members/{m2}"),
    "POST /admin/v1/orgs/{org}/invitations": Call(
        "/admin/v1/orgs/{org}/invitations", {"email": "new@example.com", "role": "viewer"}
    ),
    "DELETE /admin/v1/orgs/{org}/invitations/{invitation_id}": Call(
        "/admin/v1/orgs/{org}/invitations/{invitation}"
    ),
    "PUT /admin/v1/users/{user_id}/operator": Call("/admin/v1/users/{u1}/operator"),
    "DELETE /admin/v1/users/{user_id}/operator": Call(
        "/admin/v1/users/{u2}/operator", setup=(("PUT", "/admin/v1/users/{u2}/operator", None),)
    ),
    "PUT /admin/v1/users/{user_id}/disabled": Call("/admin/v1/users/{u3}/disabled"),
    "DELETE /admin/v1/users/{user_id}/disabled": Call(
        "/admin/v1/users/{u4}/disabled", setup=(("PUT", "/admin/v1/users/{u4}/disabled", None),)
    ),
}


def mutating_admin_routes() -> set[str]:
    """From the app's OpenAPI document, which lists every route the app serves."""
    app = create_app(Settings(home=Path("unused"), embedded_models=False))
    return {
        f"{method.upper()} {path}"
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/admin/v1")
        for method in operations
        if method.upper() in MUTATING
    }


@dataclass
class ApiSite:
    client: TestClient
    headers: dict[str, str]
    values: dict[str, str]

    def request(self, method: str, path: str, **kwargs: object) -> None:
        url = path.format(**self.values)
        response = self.client.request(method, url, headers=self.headers, **kwargs)  # type: ignore[arg-type]
        assert response.status_code < 300, f"{method} {url}: {response.text}"

    def audit_rows(self) -> int:
        response = self.client.get("/admin/v1/audit?limit=10000", headers=self.headers)
        return len(response.json()["data"])


@pytest.fixture(scope="module")
def api_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiSite]:
    settings = Settings(home=tmp_path_factory.mktemp("audited-api") / "home", embedded_models=False)

    async def seed() -> dict[str, str]:
        async with open_platform(settings) as platform:
            await platform.first_run()
            accounts = platform.accounts_admin("test")
            await accounts.create_org(NewOrganization(name="acme"))
            issued = await accounts.issue_key("acme", "bot")
            people = PeopleAdmin(platform.changes("test"), platform.clock, platform.master_key)
            values = {"org": "acme", "key": issued.key.id}
            for name in ("m1", "m2", "u1", "u2", "u3", "u4"):
                user = await people.create_user(f"{name}@example.com", "a setup value")
                values[name] = user.id
                if name.startswith("m"):
                    await people.add_member(user.id, "acme", OrgRole.VIEWER)
            roles = PeopleRoles(platform.changes("test"), platform.clock, invitation_hours=1)
            access = await roles.platform_access("acme")
            values["invitation"] = (await roles.invite(access, "i0@example.com", OrgRole.MEMBER)).id
            return values

    values = asyncio.run(seed())
    admin_key = settings.admin_key_file.read_text().strip()
    with TestClient(create_app(settings)) as client:
        yield ApiSite(client, {"Authorization": f"Bearer {admin_key}"}, values)


def test_every_mutating_admin_route_has_a_case() -> None:
    routes = mutating_admin_routes()
    assert sorted(routes - set(API_CHANGES)) == []  # a new route needs a case here
    assert sorted(set(API_CHANGES) - routes) == []


@pytest.mark.parametrize("route", sorted(API_CHANGES))
def test_each_mutating_admin_route_writes_exactly_one_audit_row(
    api_site: ApiSite, route: str
) -> None:
    method = route.split()[0]
    call = API_CHANGES[route]
    for setup_method, path, body in call.setup:
        api_site.request(setup_method, path, json=body)
    before = api_site.audit_rows()
    if call.content is not None:
        api_site.request(method, call.path, content=call.content)
    elif call.json is not None:
        api_site.request(method, call.path, json=call.json)
    else:
        api_site.request(method, call.path)
    assert api_site.audit_rows() == before + 1


# -- the first start -------------------------------------------------------------------------


def test_the_first_start_audits_the_default_organization_and_its_admin_key(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "home", embedded_models=False)

    async def first_start() -> list[tuple[str, str]]:
        async with open_platform(settings) as platform:
            assert await platform.first_run() is not None
            assert await platform.first_run() is None  # a later start changes nothing
            return [(e.action, e.actor) for e in reversed(await read_audit(platform.database))]

    assert asyncio.run(first_start()) == [
        ("org.create", "system:first-run"),
        ("key.create", "system:first-run"),
    ]
