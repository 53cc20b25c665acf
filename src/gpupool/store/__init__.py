"""Persistence: SQLAlchemy models, repositories and migrations (SQLite and PostgreSQL)."""
