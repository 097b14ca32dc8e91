"""The provider's paths, below its issuer."""

AUTHORIZE_PATH = "/authorize"
TOKEN_PATH = "/oauth2/token"  # noqa: S105  (a path)
USERINFO_PATH = "/oauth2/userinfo"
REVOKE_PATH = "/oauth2/revoke"
INTROSPECT_PATH = "/oauth2/introspect"
END_SESSION_PATH = "/end-session"
