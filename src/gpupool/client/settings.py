"""Where the CLI and the SDK find the server: GPUPOOL_URL, GPUPOOL_TOKEN (else the token file in GPUPOOL_HOME)
and GPUPOOL_TIMEOUT_S. This is the client's one reader of those variables (the server's settings are in
server/settings.py). Plain Python rather than pydantic-settings, which would add about a fifth of a second
to every CLI command's start (benchmarks/cli)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gpupool.domain.errors import ValidationError

DEFAULT_PORT = 8700  # the server's default port (server.settings.DEFAULT_PORT; a test keeps them equal)
# the server's default home (server.settings.DEFAULT_HOME; a test keeps them equal): root's server keeps its state,
# and the administrator's token, in /var/lib/gpupool, so root's CLI finds that token without GPUPOOL_HOME
DEFAULT_HOME = "/var/lib/gpupool" if os.geteuid() == 0 else "~/.gpupool"
DEFAULT_TIMEOUT_S = 30.0  # per request; long enough for a loaded server, short enough to notice a hung one


def _env(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    value = (os.environ if environ is None else environ).get(f"GPUPOOL_{name}")
    return value if value else None


def _timeout() -> float:
    raw = _env("TIMEOUT_S")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ValidationError(f"expected a number of seconds above 0, got {raw!r}", "GPUPOOL_TIMEOUT_S")
    return value


@dataclass(frozen=True)
class ClientSettings:
    """The client's settings; fields not given are read from the environment when the object is made."""

    url: str = field(default_factory=lambda: _env("URL") or f"http://127.0.0.1:{DEFAULT_PORT}")
    token: str | None = field(default_factory=lambda: _env("TOKEN"))
    home: Path = field(default_factory=lambda: Path(_env("HOME") or DEFAULT_HOME))
    timeout_s: float = field(default_factory=_timeout)

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(os.path.expanduser(str(self.home))).resolve())

    def resolved_token(self) -> str | None:
        """GPUPOOL_TOKEN, else the first line of $GPUPOOL_HOME/token, else None (no token set up, or a token
        file this user may not read). ValidationError, saying how to mend it, for a token that is not
        printable ASCII (a corrupt or foreign file)."""
        if self.token:
            return _checked_token(self.token.strip(), "GPUPOOL_TOKEN")
        path = self.home / "token"
        try:
            raw = path.read_bytes()[:4096]
        except OSError:
            return None
        lines = raw.strip().splitlines()
        return _checked_token(lines[0].strip().decode("latin-1"), str(path)) if lines else None


def _checked_token(token: str, source: str) -> str:
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ValidationError(f"{source} does not hold a gpupool token (it must be one line of printable ASCII); "
                              "set GPUPOOL_TOKEN, or issue a new admin token with `gpupool up --reset-admin-token`",
                              "token")
    return token
