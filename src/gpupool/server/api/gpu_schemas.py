"""The API types, kept in `gpupool.api.gpu_schemas` (shared with the client, which must not import the server);
re-exported here for the server's routes and services."""

from gpupool.api.gpu_schemas import *  # noqa: F403
