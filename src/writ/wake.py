"""Moved to writ.engine.wake (temporary alias for the rooms renovation; removed in WP6)."""

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what mypy sees: the moved module's names
    from writ.engine.wake import *  # noqa: F403

sys.modules[__name__] = importlib.import_module("writ.engine.wake")
