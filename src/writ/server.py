"""The HTTP server at its documented path: ``writ.server.run`` (docs/testing.md, the bench)
and ``create_app``. Everything is defined in :mod:`writ.api` (the app in ``api/app.py``,
serving in ``api/serve.py``); ``EXTENSIONS`` is the app's own list, so appending to it here
extends every app built afterwards."""

from writ.api.app import EXTENSIONS as EXTENSIONS
from writ.api.app import create_app as create_app
from writ.api.fast import WritApp as WritApp
from writ.api.middleware import MAX_BODY as MAX_BODY
from writ.api.middleware import MAX_HEADERS as MAX_HEADERS
from writ.api.serve import run as run

__all__ = ["EXTENSIONS", "MAX_BODY", "MAX_HEADERS", "WritApp", "create_app", "run"]
