"""The HTTP API: ``api.Api`` registers the routes, ``models`` holds the request and response bodies."""
