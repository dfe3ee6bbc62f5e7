"""Moved to writ.mcp (temporary alias for the rooms renovation; removed in WP6)."""

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what mypy sees through the alias: the package's public names
    from writ.mcp import DEFAULT_HTTP_PORT as DEFAULT_HTTP_PORT
    from writ.mcp import INSTRUCTIONS as INSTRUCTIONS
    from writ.mcp import TOOL_NAMES as TOOL_NAMES
    from writ.mcp import create_server as create_server
    from writ.mcp import guidance as guidance
    from writ.mcp import serve as serve

sys.modules[__name__] = importlib.import_module("writ.mcp")
