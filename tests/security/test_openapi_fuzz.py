"""Schemathesis over the served OpenAPI document: every operation, with each kind of caller's
key, bounded (a few derandomized examples per operation) and over the fake engine.

Each response must be no server error and lie inside the document: a status it lists, a
content type it lists, a body that matches the schema given for that status (the error
bodies included). Valid requests (positive) and invalid ones (negative) are both sent; an
invalid one must be refused with a status the document lists (400, 422).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from openmaas.server.app import create_app
from tests.security.world import Keys, issue_keys, security_settings
from tests.support.waiting import wait_until

CALLERS = ("admin", "member", "other", "revoked", "none")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = {GenerationMode.POSITIVE: 8, GenerationMode.NEGATIVE: 4}
OPERATIONS = [
    f"{method.upper()} {path}"
    for path, methods in create_app(security_settings(Path("unused"))).openapi()["paths"].items()
    for method in methods
]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Keys, Any]]:
    """One server for every operation (each test adds to its state, as clients would)."""
    config = security_settings(tmp_path_factory.mktemp("fuzz"))
    keys = asyncio.run(issue_keys(config))
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, what="the fake engine")
        document = client.get("/openapi.json").json()
        yield client, keys, schemathesis.openapi.from_dict(document)


def _takes_input(operation: Any) -> bool:
    return bool(operation.body) or any(True for _ in operation.iter_parameters())


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda m: m.value)
@pytest.mark.parametrize("label", OPERATIONS)
def test_every_answer_is_in_the_document(
    fuzzed: tuple[TestClient, Keys, Any], label: str, mode: GenerationMode
) -> None:
    client, keys, schema = fuzzed
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    if mode is GenerationMode.NEGATIVE and not _takes_input(operation):
        pytest.skip("nothing to send wrong")
    failures: list[str] = []

    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,  # the same examples on every run
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def each(case: Any) -> None:
        for caller in CALLERS:
            sent = case.as_transport_kwargs(
                base_url="http://testserver", headers=keys.headers(caller)
            )
            if not sent.get("cookies"):
                sent.pop("cookies", None)
            if isinstance(sent.get("data"), bytes | str):  # a raw body: httpx calls it content
                sent["content"] = sent.pop("data")
            response = client.request(**sent)
            try:
                case.validate_response(response, checks=CHECKS)
            except BaseException as exc:  # a FailureGroup: every check that failed, with curl
                failures.append(f"as {caller}: {exc}")

    each()
    assert failures == [], "\n\n".join(failures[:3])
