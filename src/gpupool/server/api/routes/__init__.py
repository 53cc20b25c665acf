"""Thin routes under /api/v1: parse, call one service, return a schema."""
