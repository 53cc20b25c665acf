"""Errors raised by the capacity planner."""

from __future__ import annotations


class PlanInputError(ValueError):
    """An input to the planner is missing, malformed or inconsistent.

    The message names the offending input (for example ``--seq`` or ``gpus[3].memory_gib``) so that
    the command line can show it to the user as it is, without a traceback.
    """
