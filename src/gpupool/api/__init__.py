"""What the server and its clients share: the API's JSON types and the client's settings. Imports nothing
of `gpupool.server`, so the HTTP client, SDK and CLI load without the server."""
