"""Settings that are derived rather than read."""

from __future__ import annotations

import pytest

from openmaas import settings as settings_module
from openmaas.settings import Settings


@pytest.mark.parametrize(
    ("cpus", "chat", "embedding"), [(2, 2, 1), (8, 2, 6), (16, 16, 1), (1, 1, 1)]
)
def test_embedding_threads_default_to_the_cpus_the_chat_model_leaves(
    monkeypatch: pytest.MonkeyPatch, cpus: int, chat: int, embedding: int
) -> None:
    monkeypatch.setattr(settings_module, "available_cpus", lambda: cpus)
    assert Settings(threads=chat).resolved_embedding_threads == embedding


def test_explicit_embedding_threads_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "available_cpus", lambda: 2)
    assert Settings(threads=2, embedding_threads=2).resolved_embedding_threads == 2


@pytest.mark.parametrize(("cpus", "chat", "embedding"), [(6, 5, 1), (2, 1, 1), (1, 1, 1)])
def test_chat_threads_leave_one_cpu_for_the_rest_of_the_machine(
    monkeypatch: pytest.MonkeyPatch, cpus: int, chat: int, embedding: int
) -> None:
    """Every CPU for llama.cpp made a 40-token answer take minutes once anything else ran
    (OpenMP barriers wait for the preempted thread); one fewer keeps it at about a second,
    and chat and embedding threads together no longer exceed the CPUs."""
    monkeypatch.setattr(settings_module, "available_cpus", lambda: cpus)
    monkeypatch.delenv("OPENMAAS_THREADS", raising=False)
    monkeypatch.delenv("OPENMAAS_EMBEDDING_THREADS", raising=False)
    settings = Settings()
    assert (settings.threads, settings.resolved_embedding_threads) == (chat, embedding)
