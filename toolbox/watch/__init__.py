"""File watching (beyond Daytona): create/modify/delete/move events over WebSocket or polling."""
