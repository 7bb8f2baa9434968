"""Signed preview URLs and the signing key of signed file URLs."""
