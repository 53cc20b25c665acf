"""The HTTP server: FastAPI app, services and background workers."""
