"""The HTTP API: schemas, error mapping, authentication dependency and routes."""
