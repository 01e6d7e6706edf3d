"""Model aliases (OPENMAAS_MODEL_ALIASES) as the Anthropic route resolves them: the catalog."""

from __future__ import annotations

import pytest

from openmaas.catalog.served import ModelCatalog, ServedModel
from openmaas.core.errors import ConfigurationError, ModelNotFound
from openmaas.engines.fake import FakeEngine, FakeScript
from openmaas.settings import Settings


def _catalog(aliases: dict[str, str]) -> ModelCatalog:
    return ModelCatalog([ServedModel("local", FakeEngine("local", FakeScript()))], aliases)


def test_alias_resolves_to_the_served_name() -> None:
    catalog = _catalog({"claude-sonnet-4-6": "local"})
    assert catalog.resolve("claude-sonnet-4-6") == "local"
    assert catalog.resolve("local") == "local"
    assert catalog.resolve("other") == "other"  # unknown names stay unknown ...
    with pytest.raises(ModelNotFound):
        catalog.get(catalog.resolve("other"))  # ... and get 404
    with pytest.raises(ModelNotFound):
        catalog.get("claude-sonnet-4-6")  # get itself never follows aliases
    assert [m.name for m in catalog.list()] == ["local"]


@pytest.mark.parametrize(
    ("aliases", "says"),
    [({"x": "missing"}, "names no served model"), ({"local": "local"}, "hides")],
)
def test_bad_aliases_refuse_to_start(aliases: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        _catalog(aliases)


def test_setting_reads_json_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENMAAS_MODEL_ALIASES", '{"claude-haiku-4-5": "local"}')
    assert Settings().model_aliases == {"claude-haiku-4-5": "local"}
