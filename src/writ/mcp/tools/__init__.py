"""The MCP tool modules, one per group of tools; the server registers them in a fixed order (tools/list order is behaviour).

Each module has ``register(server, ctx)`` and no ``from __future__ import annotations``: the MCP
SDK builds each tool's input schema from its annotations, so they are real objects from the
module's globals.
"""
