"""Language servers per (language, project): JSON-RPC over stdio, off the event loop."""
