"""The web console: server-rendered pages (Jinja2) at `/`, signed in with an API token kept in an HttpOnly,
SameSite=Strict cookie, every form protected by a CSRF token; every action calls the same service functions,
with the same permission checks, as the REST API. `install(app)` adds its routes and static files."""

from gpupool.console.app import install

__all__ = ["install"]
