"""The metered request path: the gateway around each generation and embedding (admission,
the engine, settlement with the usage record), and fetching client URLs under the egress
policy."""
