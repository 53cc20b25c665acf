"""Helpers shared by the server, store and end-to-end tests."""
