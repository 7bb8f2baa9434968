"""The control plane: Daytona's REST API (`/api`) over a sandbox backend.

Per resource a `routes.py` (thin Starlette handlers), `service.py` (logic, no HTTP) and
`dto.py` (pydantic wire models with Daytona's field names); `store/` holds the database,
`auth.py` organizations and API keys, `backend.py` the seam to what runs sandboxes.
"""
