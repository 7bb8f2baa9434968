"""An MCP server for coding agents (Claude Code, Cursor, Windsurf): sandboxes as tools,
over stdio (`python -m mcpserver start`) and over streamable HTTP from the main job
(`/api/mcp`). Thin client of the control plane and the toolbox; see docs/mcp.md."""
