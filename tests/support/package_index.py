"""Where tests that build Python environments find packages: the machine's local index for offline installs
(this machine and CI have one), GPUPOOL_TEST_INDEX_URL when set, else uv's default (PyPI)."""

from __future__ import annotations

import os
from pathlib import Path

LOCAL_INDEX = Path("/opt/pypi/simple")


def index_settings() -> dict[str, str]:
    """Server settings (environments_*) pointing uv at the package index tests use."""
    if os.environ.get("GPUPOOL_TEST_INDEX_URL"):
        return {"environments_index_url": os.environ["GPUPOOL_TEST_INDEX_URL"]}
    if not LOCAL_INDEX.exists():
        return {}
    more = [p for p in (Path("/opt/pypi-more/simple"),) if p.exists()]
    wheels = [p for p in (Path("/opt/wheels"),) if p.exists()]
    return {
        "environments_index_url": LOCAL_INDEX.as_uri(),
        "environments_extra_index_urls": " ".join(p.as_uri() for p in more),
        "environments_find_links": " ".join(str(p) for p in wheels),
    }
