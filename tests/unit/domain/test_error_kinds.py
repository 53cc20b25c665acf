"""The one mapping between domain errors and API error kinds, used by the server and the client."""

from __future__ import annotations

import pytest

from gpupool.domain.errors import (
    ERROR_KINDS,
    ConflictError,
    GpupoolError,
    InvalidTransitionError,
    UnsatisfiableError,
    ValidationError,
    error_from_kind,
    error_kind,
)


@pytest.mark.parametrize(("cls", "kind"), ERROR_KINDS)
def test_every_kind_round_trips_to_its_class(cls: type[GpupoolError], kind: str) -> None:
    error = cls("it went wrong", "spec.replicas") if issubclass(cls, ValidationError) else cls("it went wrong")
    assert error_kind(error) == kind
    back = error_from_kind(kind, "it went wrong", "spec.replicas")
    assert type(back) is cls
    if isinstance(back, ValidationError):
        assert (back.field, back.detail) == ("spec.replicas", "it went wrong")


def test_most_specific_class_wins_and_unknowns_have_no_kind() -> None:
    assert error_kind(UnsatisfiableError("no node has 9 GPUs")) == "unsatisfiable"
    assert error_kind(InvalidTransitionError("already ended")) == "conflict"
    assert isinstance(error_from_kind("conflict", "x"), ConflictError)
    assert error_kind(GpupoolError("plain")) is None
    assert error_from_kind("teapot", "x") is None
