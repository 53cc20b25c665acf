"""Trace loaders: Alibaba openb 2023 and the generic gpupool workload format."""
