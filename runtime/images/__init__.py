"""Images into snapshots: OCI images imported with skopeo and umoci, Dockerfiles built
step by step in sandboxes, layers cached by content (docs/images.md)."""
