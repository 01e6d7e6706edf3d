"""Routing a model's requests over its deployments: the router (an engine over engines),
with affinity, failover before the first byte, fallbacks and circuit breakers. Its pure
scores live in ``core/routing.py``; the catalog builds routers from its document."""
