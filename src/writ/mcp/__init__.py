"""The MCP server: tools, resources and guidance for models, talking to writ through writ.client only."""
