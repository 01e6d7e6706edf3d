"""The metered request path: the gateway around each generation, the router over a model's
deployments, and fetching client URLs under the egress policy."""
