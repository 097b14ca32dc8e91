"""The HTTP shell every package's routes run inside: middleware, errors, health, metrics."""
