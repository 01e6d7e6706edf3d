"""Fixtures shared by every test: the manual clock (tests/support/clock.py)."""

from __future__ import annotations

import pytest

from tests.support.clock import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    """Time that stands still until the test advances it; a module overrides this fixture
    for another starting time."""
    return ManualClock()
