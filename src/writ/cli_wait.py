"""Moved to writ.cli.wait (temporary alias for the rooms renovation; removed in WP6)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("writ.cli.wait")
