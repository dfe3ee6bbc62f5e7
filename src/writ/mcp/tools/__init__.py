"""The MCP tool modules, one per group of tools; the server registers them in a fixed order (tools/list order is behaviour)."""
