"""Moved to writ.evidence.history (temporary alias for the rooms renovation; removed in WP6)."""

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what mypy sees: the new module's public names
    from writ.evidence.history import *  # noqa: F403

sys.modules[__name__] = importlib.import_module("writ.evidence.history")
