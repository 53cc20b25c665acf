"""The typed client builds each answer type's validator once, not per request (building one generates the
type's whole schema: more CPU than the rest of a request)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter

from gpupool.api import schemas
from gpupool.client import http


class Unhashable:
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return self is other


def test_a_validator_is_built_once_per_answer_type() -> None:
    for model in (schemas.WorkloadSubmitted, list[schemas.NodeInfo], schemas.Health):
        first = http._adapter(model)
        assert http._adapter(model) is first and isinstance(first, TypeAdapter)
    assert http._adapter(list[schemas.NodeInfo]) is not http._adapter(list[schemas.Queue])


def test_an_unhashable_type_expression_still_gets_a_validator() -> None:
    class Item(BaseModel):
        n: int

    model: Any = Annotated[Item, Unhashable()]
    assert http._adapter(model).validate_python({"n": 3}) == Item(n=3)
