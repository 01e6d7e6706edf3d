"""Services: authentication, the model catalog, the metered request path, bootstrap."""
