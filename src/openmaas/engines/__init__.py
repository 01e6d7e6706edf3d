"""Engines: the ``Engine`` interface and its implementations. Imports core (and glm) only."""
