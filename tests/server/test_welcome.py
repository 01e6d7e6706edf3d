"""The first start's welcome (server/runner.py): its examples name a chat model this server
serves, so that copying them works whatever the settings declare."""

from __future__ import annotations

from pathlib import Path

from openmaas.server.runner import example_model
from openmaas.settings import Settings


def test_the_examples_use_the_embedded_chat_model_by_default(tmp_path: Path) -> None:
    assert example_model(Settings(home=tmp_path)) == "smollm2-135m-instruct"


def test_without_embedded_models_the_examples_use_a_declared_chat_model(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, embedded_models=False, fake_models={"coder": {"text": "x"}})
    assert example_model(settings) == "coder"


def test_without_any_chat_model_the_examples_say_where_to_find_one(tmp_path: Path) -> None:
    model = example_model(Settings(home=tmp_path, embedded_models=False))
    assert model != "smollm2-135m-instruct" and "/v1/models" in model
