"""Sandboxes: `/sandbox` and its sub-resources."""
