"""``openmaas catalog``, ``models``, ``deployments`` and ``credentials``."""

from __future__ import annotations

import sys

import click

from openmaas.catalog.admin import CatalogAdmin, CredentialValue, CurrentCatalog
from openmaas.catalog.document import CatalogRejected, document_version, parse_catalog
from openmaas.catalog.schema import BuildContext, CatalogDocument
from openmaas.catalog.served import settings_model_names
from openmaas.cli.common import admin_body, cap, print_table, with_catalog
from openmaas.cli.root import main
from openmaas.core.admin_fields import iso_ms
from openmaas.settings import Settings


def _read_catalog(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: cannot read it ({exc}).") from None


def _current_document() -> tuple[CurrentCatalog, CatalogDocument | None]:
    async def action(admin: CatalogAdmin) -> tuple[CurrentCatalog, CatalogDocument | None]:
        current = await admin.current()
        if not current.document:
            return current, None
        return current, parse_catalog(current.document, current.path or "catalog")

    return with_catalog(action)


@main.group(help="The catalog document: models and their deployments (docs/catalog.md).")
def catalog() -> None:
    pass


@catalog.command("check", help="Check a catalog file; print each problem with its line.")
@click.argument("file", type=click.Path(dir_okay=False))
def catalog_check(file: str) -> None:
    text = _read_catalog(file)
    settings = Settings()
    try:
        document = parse_catalog(
            text,
            file,
            reserved=settings_model_names(settings),
            ctx=BuildContext(credential_names=None, check_paths=True),
        )
    except CatalogRejected as exc:
        for issue in exc.issues:
            click.echo(issue.render(exc.source), err=True)
        raise SystemExit(1) from None
    deployments = sum(len(m.deployments) for m in document.models)
    click.echo(
        f"{file}: valid, {len(document.models)} models, {deployments} deployments, "
        f"version {document_version(text)[:12]}"
    )


@catalog.command("apply", help="Store a catalog file as the catalog; the server applies it.")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Apply a file that declares no models (it removes every catalog model).",
)
def catalog_apply(file: str, allow_empty: bool) -> None:
    text = _read_catalog(file)
    version = with_catalog(lambda admin: admin.apply(text, file, allow_empty=allow_empty))
    click.echo(f"Catalog version {version} stored; a running server applies it within seconds.")


@catalog.command("show", help="Print the catalog document in force.")
def catalog_show() -> None:
    current = with_catalog(lambda admin: admin.current())
    where = current.path or "the database"
    click.echo(f"# source: {where}; version: {current.version or 'none'}", err=True)
    if current.document:
        click.echo(current.document, nl=not current.document.endswith("\n"))


def _settings_models(settings: Settings) -> list[tuple[str, str]]:
    """(name, kind) of the models the settings serve: the built-in catalog document's."""
    from openmaas.catalog.builtin import settings_document

    return [(model.name, model.kind) for model in settings_document(settings).models]


@main.group(help="Served models (the settings' and the catalog's).")
def models() -> None:
    pass


@models.command("list", help="Every model: kind, deployments, data classes, aliases.")
def models_list() -> None:
    settings = Settings()
    _, document = _current_document()
    rows: list[tuple[str, ...]] = [
        (name, kind, "settings", name, "local", "") for name, kind in _settings_models(settings)
    ]
    for m in document.models if document else []:
        classes = sorted({d.data_class for d in m.deployments})
        rows.append(
            (
                m.name,
                m.kind,
                "catalog",
                ",".join(d.id for d in m.deployments),
                ",".join(classes),
                ",".join(m.aliases),
            )
        )
    print_table(("model", "kind", "source", "deployments", "data classes", "aliases"), rows)


@main.group(help="Deployments of the catalog's models.")
def deployments() -> None:
    pass


@deployments.command("list", help="Every deployment of the catalog document.")
def deployments_list() -> None:
    _, document = _current_document()
    rows: list[tuple[str, ...]] = []
    for m in document.models if document else []:
        for d in m.deployments:
            target = getattr(d, "base_url", None) or str(getattr(d, "path", "") or "")
            rows.append(
                (
                    m.name,
                    d.id,
                    d.engine,
                    d.data_class,
                    str(d.weight),
                    str(d.priority),
                    cap(d.max_concurrency),
                    target,
                )
            )
    headers = ("model", "id", "engine", "data class", "weight", "priority", "max conc.", "target")
    print_table(headers, rows)


@main.group(help="Upstream credentials (API keys of cloud upstreams), sealed at rest.")
def credentials() -> None:
    pass


@credentials.command("set", help="Set NAME; the value is read from stdin or a hidden prompt.")
@click.argument("name")
def credentials_set(name: str) -> None:
    if sys.stdin.isatty():
        value = click.prompt(f"Value of {name}", hide_input=True, confirmation_prompt=True)
    else:
        value = sys.stdin.read().rstrip("\r\n")
    credential = admin_body(CredentialValue, value=value)
    created = with_catalog(lambda admin: admin.set_credential(name, credential))
    click.echo(f"Credential {name} {'created' if created else 'replaced'}.")


@credentials.command("list", help="Credential names and dates (never their values).")
def credentials_list() -> None:
    rows: list[tuple[str, ...]] = [
        (c.name, iso_ms(c.created_at_ms), iso_ms(c.updated_at_ms))
        for c in with_catalog(lambda admin: admin.list_credentials())
    ]
    print_table(("name", "created (UTC)", "updated (UTC)"), rows)


@credentials.command("delete", help="Delete a credential the catalog no longer uses.")
@click.argument("name")
def credentials_delete(name: str) -> None:
    with_catalog(lambda admin: admin.delete_credential(name))
    click.echo(f"Credential {name} deleted.")
