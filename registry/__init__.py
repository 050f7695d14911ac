"""pybuild's OCI registry: the OCI objects, the HTTP server and the client."""
