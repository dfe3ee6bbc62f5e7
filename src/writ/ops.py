"""Moved to writ.api.ops (temporary alias for the rooms renovation; removed in WP6)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("writ.api.ops")
