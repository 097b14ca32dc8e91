"""Credentials, one module per kind: password, totp, recovery codes, upstream providers."""
