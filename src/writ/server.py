"""Moved to writ.api (temporary alias for the rooms renovation; WP6 makes it a permanent shim).

``writ.server`` is ``writ.api.app`` (``create_app``, ``EXTENSIONS``, ``WritApp``), which also
carries the names that moved elsewhere in writ.api (``run``, ``MAX_BODY``, ``MAX_HEADERS``,
``_INTERNAL_ERROR``), so that ``monkeypatch.setattr(writ.server, "run" | "EXTENSIONS", ...)``
reaches the code that reads them (the CLI looks ``run`` up on this module at call time).
"""

import importlib
import sys

from writ.api.app import EXTENSIONS as EXTENSIONS
from writ.api.app import create_app as create_app
from writ.api.deps import principal as principal
from writ.api.fast import WritApp as WritApp
from writ.api.middleware import _INTERNAL_ERROR as _INTERNAL_ERROR
from writ.api.middleware import MAX_BODY as MAX_BODY
from writ.api.middleware import MAX_HEADERS as MAX_HEADERS
from writ.api.serve import run as run

_app = importlib.import_module("writ.api.app")
for _name in ("WritApp", "principal", "_INTERNAL_ERROR", "MAX_BODY", "MAX_HEADERS", "run"):
    setattr(_app, _name, globals()[_name])
sys.modules[__name__] = _app
