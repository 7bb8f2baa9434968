"""The in-sandbox toolbox daemon: Daytona's Toolbox API on Starlette + uvicorn."""

__version__ = "0.1.0"
