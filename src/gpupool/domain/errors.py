"""Domain errors. Each carries a message a user can act on; the server maps them to HTTP codes in one place."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GpupoolError(Exception):
    """Base of every error gpupool raises on purpose. `str(error)` is the user-facing message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(GpupoolError):
    """Input is malformed or inconsistent. `field` is a dotted path to the offending input, when known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.detail = message


class UnsatisfiableError(ValidationError):
    """A request that no node of the cluster could ever satisfy, even when every node is empty."""


class NotFoundError(GpupoolError):
    """A named or numbered object does not exist (or is not visible to the caller)."""


class PermissionDeniedError(GpupoolError):
    """The caller is authenticated but lacks the role the action needs."""


class AuthenticationError(GpupoolError):
    """No credentials, or credentials that are not valid."""


class ConflictError(GpupoolError):
    """The action contradicts the current state (a duplicate name, a busy GPU, a finished workload)."""


class InvalidTransitionError(ConflictError):
    """A status change that the workload life cycle does not allow."""


class StoreBusyError(GpupoolError):
    """The server's database stayed busy past its lock wait (SQLite's write lock, a PostgreSQL lock timeout, or
    a serialization failure that outlived the retries): the request was not completed and may be retried."""


# The one mapping between error classes and the `type` of an API error body (most specific first); the server
# maps each kind to an HTTP status, the client maps the kind back to the class.
ERROR_KINDS: tuple[tuple[type[GpupoolError], str], ...] = (
    (UnsatisfiableError, "unsatisfiable"),
    (ValidationError, "validation_error"),
    (AuthenticationError, "authentication_error"),
    (PermissionDeniedError, "permission_denied"),
    (NotFoundError, "not_found"),
    (ConflictError, "conflict"),
    (StoreBusyError, "store_busy"),
)


def error_kind(exc: GpupoolError) -> str | None:
    """The API error kind of `exc` (see ERROR_KINDS), or None for a GpupoolError without one."""
    return next((kind for cls, kind in ERROR_KINDS if isinstance(exc, cls)), None)


def error_from_kind(kind: str, message: str, field: str | None = None) -> GpupoolError | None:
    """The domain error an API error body of `kind` stands for (the field kept for validation errors), or
    None for a kind without a class."""
    cls = next((c for c, k in ERROR_KINDS if k == kind), None)
    if cls is None:
        return None
    if issubclass(cls, ValidationError):
        return cls(message, field)
    return cls(message)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for the closest of `choices` to `word`, or '' when none is close."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def reject_unknown_keys(data: dict[str, object], allowed: Iterable[str], where: str | None = None) -> None:
    """Raise ValidationError naming the first key of `data` not in `allowed`, with a suggestion."""
    allowed_set = set(allowed)
    for key in data:
        if key not in allowed_set:
            field = f"{where}.{key}" if where else str(key)
            raise ValidationError(
                f"unknown field{did_you_mean(str(key), allowed_set)}; allowed: {', '.join(sorted(allowed_set))}",
                field,
            )
