"""Trace-driven simulator: the real scheduler on a virtual clock."""
