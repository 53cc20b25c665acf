"""Executors run replicas: local processes or a Ray cluster, behind one interface."""
