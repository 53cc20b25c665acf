"""Errors of a batch item keep their API kind and name the item."""

from __future__ import annotations

import pytest

from gpupool.domain.errors import (
    ConflictError,
    GpupoolError,
    PermissionDeniedError,
    UnsatisfiableError,
    ValidationError,
)
from gpupool.server.services.workload_batch import at_item


class _OddConflictError(ConflictError):
    """A subclass whose constructor differs from its base's."""

    def __init__(self, code: int) -> None:
        super().__init__(f"conflict {code}")


@pytest.mark.parametrize(("error", "kind", "text", "field"), [
    (UnsatisfiableError("no node has 64 GPUs", "resources"), UnsatisfiableError, "items[2].resources: no node",
     "items[2].resources"),
    (ValidationError("cannot read the YAML"), ValidationError, "items[2]: cannot read", "items[2]"),
    (PermissionDeniedError("viewers cannot submit"), PermissionDeniedError, "items[2]: viewers", None),
    (_OddConflictError(7), ConflictError, "items[2]: conflict 7", None),
    (GpupoolError("other"), GpupoolError, "items[2]: other", None),
])
def test_an_item_error_keeps_its_kind_and_names_the_item(error: GpupoolError, kind: type, text: str,
                                                         field: str | None) -> None:
    named = at_item(2, error)
    assert type(named) is kind and str(named).startswith(text)
    assert getattr(named, "field", None) == field
