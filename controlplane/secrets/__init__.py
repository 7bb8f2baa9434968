"""Secrets: organization-owned values, injected as environment into the sandboxes that name them."""
