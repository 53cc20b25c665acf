"""The API types, kept in `gpupool.api.schemas` (shared with the client, which must not import the server);
re-exported here for the server's routes and services."""

from gpupool.api.schemas import *  # noqa: F403
