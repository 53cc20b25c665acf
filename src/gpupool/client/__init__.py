"""The typed HTTP client shared by the CLI, the SDK and the tests."""
