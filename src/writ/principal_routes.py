"""Moved to writ.api.routers.principals (temporary alias for the rooms renovation; removed in WP6)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("writ.api.routers.principals")
