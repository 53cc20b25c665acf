"""The web console served by the server."""
