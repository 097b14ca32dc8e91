"""Path classes the HTTP shell treats differently."""

# Machine-facing paths: they answer JSON whatever the Accept header says, and set no
# cookies (probes, scrapers and API clients have no use for them).
MACHINE_PATHS = ("/api/", "/.well-known/", "/oauth2/", "/healthz", "/readyz", "/metrics")

# The OAuth endpoints: their errors are OAuth errors ({"error": "invalid_request"}).
OAUTH_PATHS = "/oauth2/"
