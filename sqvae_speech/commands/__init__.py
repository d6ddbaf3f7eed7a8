"""Small CLI commands that glue library functions together."""
