"""The OpenID Connect provider, one module per endpoint (OpenID Connect Core, RFC 6749,
RFC 7517, RFC 8414)."""
