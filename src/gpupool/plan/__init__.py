"""Capacity planner: GPU memory, compute, time and MIG sizing from published formulas."""
