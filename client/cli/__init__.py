"""`sandbox-toolbox`: a CLI shaped like Daytona's, a client of `/api` and the toolbox (docs/cli.md)."""
