"""Snapshots: the built-in default snapshot; image builds are not available yet."""
