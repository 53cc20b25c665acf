"""Executors run replicas: local processes or a Ray cluster, behind one interface.

base.py (the interface), local.py (supervised processes on this machine, crash-safe), fake.py (scripted,
in memory), environment.py (base, GPU and identity variables), rendezvous.py (torch and TensorFlow),
storage.py (per-user, per-project and shared directories). See docs/executors.md.
"""
