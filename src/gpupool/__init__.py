"""gpupool: one shared, self-service, fairly scheduled pool of GPU servers."""

__version__ = "0.1.0"
