"""The fair queue in front of an engine's slots (engines/slots/fair.py): who gets a freed slot,
who is refused, and that nothing is given or freed twice."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openmaas.core.errors import EngineOverloaded
from openmaas.engines.slots.fair import FairQueue, Place, PlaceState


def _order(queue: FairQueue, running: list[Place], waiting: list[Place]) -> list[str]:
    """Release the running places one at a time (each freed permit goes to the next) until
    nothing runs; the keys in the order the waiting places were given a permit."""
    served: list[str] = []
    active = list(running)
    while active:
        place = active.pop(0)
        queue.release(place)
        for w in waiting:
            if w.state is PlaceState.RUNNING and w not in active and w.key:
                active.append(w)
                served.append(w.key)
    return served


def test_a_key_arriving_behind_another_keys_backlog_runs_next() -> None:
    queue = FairQueue("m", slots=1, queue=20)
    [first] = queue.admit("A")
    backlog = [queue.admit("A")[0] for _ in range(9)]
    [b] = queue.admit("B")
    assert first.state is PlaceState.RUNNING
    assert b.state is PlaceState.WAITING
    served = _order(queue, [first], [*backlog, b])
    assert served[0] == "B"  # second to run, not eleventh
    assert served[1:] == ["A"] * 9


def test_within_a_key_requests_run_in_arrival_order() -> None:
    queue = FairQueue("m", slots=1, queue=10)
    [first] = queue.admit("A")
    waiting = [queue.admit("A")[0] for _ in range(5)]
    queue.release(first)
    for place in waiting:
        assert place.state is PlaceState.RUNNING
        assert all(p.state is PlaceState.WAITING for p in waiting[waiting.index(place) + 1 :])
        queue.release(place)


def test_backlogged_keys_are_served_in_proportion_to_their_weights() -> None:
    queue = FairQueue("m", slots=1, queue=400, share=1.0)
    [first] = queue.admit("C")  # holds the slot while both backlogs build up
    heavy = [queue.admit("A", weight=2)[0] for _ in range(150)]
    light = [queue.admit("B", weight=1)[0] for _ in range(150)]
    served = _order(queue, [first], heavy + light)
    window = Counter(served[:150])  # both still backlogged over these
    assert window["A"] == 100
    assert window["B"] == 50


def test_a_key_over_its_share_of_the_queue_is_refused_while_another_is_admitted() -> None:
    queue = FairQueue("m", slots=1, queue=8)  # share 0.5: 4 waiting per key
    queue.admit("A")
    for _ in range(4):
        queue.admit("A")
    with pytest.raises(EngineOverloaded) as refused:
        queue.admit("A")
    assert "share of the queue" in refused.value.message
    [b] = queue.admit("B")
    assert b.state is PlaceState.WAITING
    assert queue.waiting == 5


def test_the_queue_share_is_at_least_one_request() -> None:
    queue = FairQueue("m", slots=1, queue=1, share=0.1)
    queue.admit("A")
    [waiting] = queue.admit("A")
    assert waiting.state is PlaceState.WAITING
    with pytest.raises(EngineOverloaded):
        queue.admit("B")  # the queue itself is full


def test_a_full_queue_refuses_every_key() -> None:
    queue = FairQueue("m", slots=1, queue=2, share=1.0)
    queue.admit("A")
    queue.admit("A")
    queue.admit("B")
    with pytest.raises(EngineOverloaded):
        queue.admit("C")


def test_requests_without_a_key_share_one() -> None:
    queue = FairQueue("m", slots=1, queue=4)
    queue.admit(None)
    queue.admit(None)
    queue.admit(None)
    with pytest.raises(EngineOverloaded):
        queue.admit(None)
    assert queue.waiting_of(None) == 2


def test_a_cancelled_waiter_frees_its_place_and_nothing_twice() -> None:
    queue = FairQueue("m", slots=1, queue=2, share=1.0)
    [running] = queue.admit("A")
    [left] = queue.admit("A")
    [stays] = queue.admit("B")
    with pytest.raises(EngineOverloaded):
        queue.admit("C")
    queue.release(left)  # the client went away while it waited
    queue.release(left)
    assert left.state is PlaceState.DONE
    assert queue.waiting == 1 and queue.running == 1
    [c] = queue.admit("C")  # its place is free again
    queue.release(running)
    assert stays.state is PlaceState.RUNNING
    assert c.state is PlaceState.WAITING
    queue.release(running)  # released twice: frees no second permit
    assert c.state is PlaceState.WAITING
    assert queue.running == 1


def test_all_or_none_for_several_places() -> None:
    queue = FairQueue("m", slots=2, queue=2, share=1.0)
    places = queue.admit("A", count=3)
    assert [p.state for p in places] == [PlaceState.RUNNING] * 2 + [PlaceState.WAITING]
    with pytest.raises(EngineOverloaded):
        queue.admit("B", count=2)
    assert queue.in_flight == 3


async def test_a_waiter_is_woken_when_a_permit_frees_and_cancelling_it_leaves_it_waiting() -> None:
    queue = FairQueue("m", slots=1, queue=2)
    [running] = queue.admit("A")
    [waiter] = queue.admit("B")
    [other] = queue.admit("C")
    waiting = asyncio.create_task(queue.wait(waiter))
    cancelled = asyncio.create_task(queue.wait(other))
    await asyncio.sleep(0)
    assert not waiting.done()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    queue.release(other)  # what the stream's close does when its client left
    queue.release(running)
    await waiting
    assert waiter.state is PlaceState.RUNNING
    assert queue.running == 1 and queue.waiting == 0


@settings(max_examples=200, deadline=None)
@given(
    slots=st.integers(1, 3),
    size=st.integers(0, 6),
    ops=st.lists(
        st.tuples(st.sampled_from("admit release leave".split()), st.integers(0, 3)),
        max_size=80,
    ),
)
def test_permits_never_exceed_slots_and_no_waiter_is_starved(
    slots: int, size: int, ops: list[tuple[str, int]]
) -> None:
    queue = FairQueue("m", slots=slots, queue=size)
    places: list[Place] = []
    admitted_at: dict[int, int] = {}  # place seq -> how many grants had happened then
    grants = 0
    for op, n in ops:
        before = {p.seq for p in places if p.state is PlaceState.RUNNING}
        if op == "admit":
            try:
                new = queue.admit(f"k{n}", weight=n + 1)
            except EngineOverloaded:
                new = []
            places += new
            for p in new:
                admitted_at[p.seq] = grants
        else:
            state = PlaceState.RUNNING if op == "release" else PlaceState.WAITING
            chosen = [p for p in places if p.state is state]
            if chosen:
                queue.release(chosen[n % len(chosen)])
        now_running = [p for p in places if p.state is PlaceState.RUNNING]
        grants += len({p.seq for p in now_running} - before)
        assert len(now_running) == queue.running <= slots
        waiting = [p for p in places if p.state is PlaceState.WAITING]
        assert len(waiting) == queue.waiting <= size
        if waiting:
            assert queue.running == slots  # a free permit never leaves anyone waiting
        # bounded waiting: at most (keys x max weight x queue) grants pass a waiter by
        for p in waiting:
            assert grants - admitted_at[p.seq] <= 4 * 4 * (size + 1) + slots
    # drained: every waiter is eventually served
    while any(p.state is not PlaceState.DONE for p in places):
        running = [p for p in places if p.state is PlaceState.RUNNING]
        assert running
        queue.release(running[0])
    assert queue.in_flight == 0
