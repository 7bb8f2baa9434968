"""Listening TCP ports of the sandbox, read from the kernel's socket tables on request."""
