"""The admin API's request bodies are pydantic models: each appears, with its schema, in
``/openapi.json`` (money as decimal strings)."""

from __future__ import annotations

from pathlib import Path

from openmaas.server.app import create_app
from openmaas.settings import Settings


def test_every_admin_body_is_in_the_openapi_document() -> None:
    schema = create_app(Settings(home=Path("unused"), embedded_models=False)).openapi()
    components = schema["components"]["schemas"]
    changes = {
        f"{method.upper()} {path}": op
        for path, operations in schema["paths"].items()
        if path.startswith("/admin/v1")
        for method, op in operations.items()
        if method in ("post", "put", "patch")
    }
    bodies = {r: op["requestBody"]["content"] for r, op in changes.items() if "requestBody" in op}
    assert sorted(set(changes) - set(bodies)) == [  # a flag set by the path alone
        "PUT /admin/v1/users/{user_id}/disabled",
        "PUT /admin/v1/users/{user_id}/operator",
    ]
    assert bodies["PUT /admin/v1/catalog"] == {"application/yaml": {"schema": {"type": "string"}}}
    for route, content in bodies.items():
        if route == "PUT /admin/v1/catalog":
            continue
        ref = content["application/json"]["schema"]["$ref"]
        assert ref.split("/")[-1] in components, route
    price = components["NewPrice"]
    assert price["properties"]["input"]["type"] == "string"  # money: a decimal string
    assert set(price["required"]) == {"model", "input", "cached_input", "output"}
    assert price["additionalProperties"] is False
    tier = components["TierLimits"]
    assert "models" in tier["properties"] and "Caps" in components
