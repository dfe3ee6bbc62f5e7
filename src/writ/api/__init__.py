"""The HTTP API: the FastAPI app (api.app), its dependencies, schemas, error handlers,
middleware, the fast lease path, serving, and one router per tag (in api.routers)."""

from writ.api.app import EXTENSIONS as EXTENSIONS
from writ.api.app import create_app as create_app
from writ.api.fast import WritApp as WritApp

__all__ = ["EXTENSIONS", "WritApp", "create_app"]
