"""Warm pools: Daytona's per-snapshot warm pools, mapped onto the runtime's own pool."""
