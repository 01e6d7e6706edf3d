"""Choosing a slot so that no organization reuses another's cached prompt
(engines/prompt_cache.py)."""

from __future__ import annotations

from openmaas.engines.prompt_cache import SlotChoice, SlotScopes


def test_a_scope_goes_back_to_its_own_slot_and_reuses_its_cache() -> None:
    scopes = SlotScopes(2)
    first = scopes.take("a")
    assert first.reuse_cache is False  # nothing cached yet
    scopes.give_back(first.slot)
    assert scopes.take("a") == SlotChoice(first.slot, reuse_cache=True)


def test_another_scope_never_reuses_a_slots_cache() -> None:
    scopes = SlotScopes(2)
    a = scopes.take("a")
    scopes.give_back(a.slot)
    b = scopes.take("b")
    assert b.slot != a.slot and not b.reuse_cache  # a free slot not yet used
    scopes.give_back(b.slot)
    c = scopes.take("c")  # every slot used: the least recently used, its cache off
    assert c == SlotChoice(a.slot, reuse_cache=False)
    scopes.give_back(c.slot)
    assert scopes.take("a") == SlotChoice(b.slot, reuse_cache=False)  # a's slot went to c


def test_when_every_slot_is_busy_a_request_queues_behind_its_own_scope() -> None:
    scopes = SlotScopes(2)
    a, b = scopes.take("a"), scopes.take("b")
    assert scopes.take("b") == SlotChoice(b.slot, reuse_cache=True)
    # A third scope waits for the least busy slot, and may not reuse it.
    assert scopes.take("c") == SlotChoice(a.slot, reuse_cache=False)
    # What a slot was given last decides: a's next request follows c's on that slot.
    assert scopes.take("a").reuse_cache is False


def test_of_its_own_slots_a_request_takes_the_one_whose_prompt_begins_as_its_own() -> None:
    scopes = SlotScopes(3)
    main = scopes.take("a", "system: you are a coder; user: fix the bug")
    side = scopes.take("a", "system: you summarise; user: summarise this")
    scopes.give_back(main.slot)
    scopes.give_back(side.slot)
    # The side conversation was served last, yet the main one goes back to its own slot.
    again = scopes.take("a", "system: you are a coder; user: fix the bug; assistant: done")
    assert again == SlotChoice(main.slot, reuse_cache=True)
