"""How an engine's slots are shared: fair queuing between organizations, and
prompt caches kept per organization."""
