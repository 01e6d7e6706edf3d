"""The model catalog: the document that declares models and deployments, its schema, the
served catalog the request path reads, its live reloading and its administration."""
