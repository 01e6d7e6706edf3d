"""Fixtures shared by every test directory: the throwaway Redis server (tests/support/redis.py)."""

from __future__ import annotations

pytest_plugins = ("tests.support.redis",)
