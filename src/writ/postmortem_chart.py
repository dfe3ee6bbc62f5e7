"""Moved to writ.evidence.postmortem.chart (temporary alias for the rooms renovation; removed in WP6)."""

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what mypy sees: the new module's public names
    from writ.evidence.postmortem.chart import *  # noqa: F403

sys.modules[__name__] = importlib.import_module("writ.evidence.postmortem.chart")
