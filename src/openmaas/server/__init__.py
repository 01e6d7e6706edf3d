"""The ASGI application: routes, middleware, errors, health and the process runner."""
