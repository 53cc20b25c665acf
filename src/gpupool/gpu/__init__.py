"""GPU discovery, monitoring and sharing (NVML, MPS, MIG)."""
