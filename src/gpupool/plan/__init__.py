"""Capacity planner: GPU memory, compute, time and MIG sizing from published formulas.

Pure functions, no I/O besides :func:`gpupool.plan.catalog.load_catalog` (which reads the packaged
YAML catalogs and an optional user file). Entry points: :func:`gpupool.plan.train.plan_training`,
:func:`gpupool.plan.inference.plan_serving` and :func:`gpupool.plan.mig.plan_mig`, each returning a
:class:`gpupool.plan.report.Report`. The formulas and their sources are listed in ``docs/planner.md``.
"""
