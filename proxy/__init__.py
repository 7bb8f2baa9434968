"""Preview proxy: `{port}-{sandboxId}.{domain}` and `/toolbox/{sandboxId}/...` to sandbox daemons."""

__version__ = "0.1.0"
