"""A JSON request body parsed inside a route, refused exactly as FastAPI refuses a bad one.

A route that must know its caller before it looks at its body (the single submit: `BodyLimit` lets it
authenticate the caller in its own worker thread) takes the raw bytes and parses them here, after the
caller is known: a bad body is the same 422 `validation_error` that FastAPI's own parsing gives.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def parse_json_body(model: type[M], raw: bytes) -> M:
    """`raw` (a JSON document) as `model`; RequestValidationError (answered 422) when it is empty, not JSON
    or not a valid `model`, each problem located under "body" as FastAPI locates it."""
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required",
                                       "input": None}])
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", getattr(error, "pos", 0)),
                                       "msg": "JSON decode error", "input": {},
                                       "ctx": {"error": str(error)}}]) from None
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise RequestValidationError([_in_body(problem) for problem in error.errors()]) from None


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a route that parses `model` itself (for `openapi_extra`): the schema
    FastAPI would have written, a reference to the model's component."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _in_body(problem: Any) -> dict[str, Any]:
    """A pydantic problem with its location under "body"."""
    found = dict(problem)
    found["loc"] = ("body", *found.get("loc", ()))
    return found
