"""Use cases: one function per thing a caller can do; routes and workers call these, never the ORM directly."""
