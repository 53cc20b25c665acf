"""The client's errors and how an API error response becomes one, shared by the typed client (client/http.py)
and the CLI's light client (client/light.py), so that both raise the same errors with the same messages.

Standard library only: the CLI imports this module on every command that talks to a server.
"""

from __future__ import annotations

import json

from gpupool.domain.errors import GpupoolError, error_from_kind

# how many characters of a response that is not an API error body an ApiError quotes (enough to recognise a
# proxy's error page, short enough for one terminal line or two)
QUOTED_BODY_CHARS = 500


class ServerUnavailableError(GpupoolError):
    """The server could not be reached."""


class ApiError(GpupoolError):
    """An error response the client has no more specific class for; `http_status` is the HTTP status code."""

    def __init__(self, message: str, http_status: int) -> None:
        super().__init__(message)
        self.http_status = http_status


def unreachable(url: str, reason: str) -> ServerUnavailableError:
    """The error for a server that did not answer at `url` (`reason`: what the transport reported)."""
    return ServerUnavailableError(
        f"cannot reach the gpupool server at {url} ({reason}); start it with "
        "`gpupool up` (or `make run`), or point GPUPOOL_URL at a running server")


def unreadable_certificates(reason: str) -> ServerUnavailableError:
    """The error for certificates that SSL_CERT_FILE or SSL_CERT_DIR name but that cannot be loaded."""
    import os  # noqa: PLC0415  (rarely needed)

    named = next((f"{key}={os.environ[key]}" for key in ("SSL_CERT_FILE", "SSL_CERT_DIR") if os.environ.get(key)),
                 "certifi's bundle")
    return ServerUnavailableError(f"cannot load the certificates that vouch for the server's ({named}: {reason}); "
                                  "point SSL_CERT_FILE at a PEM file of trusted certificates, or unset it")


def redirected(url: str, status: int, location: str) -> ApiError:
    """The error for a redirect: neither client follows one, as the token would go wherever it points."""
    return ApiError(f"HTTP {status}: the server at {url} redirects to {location or 'an address it does not name'}; "
                    "set GPUPOOL_URL to the server's own address (redirects are not followed, so that the token "
                    "is sent to that address only)", status)


def not_json(status: int, body: str) -> ApiError:
    """The error for a success answer whose body is not JSON (a web page where the server should be)."""
    return ApiError(f"HTTP {status}: not a JSON answer: {body[:QUOTED_BODY_CHARS]}", status)


def unexpected_answer(status: int, problem: str) -> ApiError:
    """The error for a success answer whose JSON is not what this client expects (`problem`: the first
    difference): most often a client and a server of different versions."""
    from gpupool import __version__  # noqa: PLC0415  (only on this error)

    return ApiError(f"HTTP {status}: the server's answer is not what this client (gpupool {__version__}) expects: "
                    f"{problem[:QUOTED_BODY_CHARS]}; use a client of the server's version (its /healthz names it)",
                    status)


def error_from_response(status: int, body: str) -> GpupoolError:
    """The error an HTTP error response stands for: the domain error of its `{"error": {"type", "message",
    "field"}}` body (see domain.errors.ERROR_KINDS), else an ApiError quoting the status and the body."""
    try:
        detail = json.loads(body)["error"]
        kind, message, field = str(detail["type"]), str(detail["message"]), detail.get("field")
    except (ValueError, KeyError, TypeError):
        return ApiError(f"HTTP {status}: {body[:QUOTED_BODY_CHARS]}", status)
    found = error_from_kind(kind, message, field)
    return found if found is not None else ApiError(message, status)
