"""The HTTP API: the FastAPI app, its dependencies, schemas, error handlers, middleware, the fast lease path, serving, and one router per tag (in api.routers)."""
