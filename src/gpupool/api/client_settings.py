"""Where the CLI and SDK find the server. With `gpupool.server.settings`, the only readers of environment
variables (prefix GPUPOOL_); kept here so the client never imports the server package."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path("~/.gpupool")
DEFAULT_PORT = 8700


def expand_path(path: Path) -> Path:
    """`path` with ~ expanded, made absolute."""
    return Path(os.path.expanduser(str(path))).resolve()


class ClientSettings(BaseSettings):
    """Where the CLI and SDK find the server: GPUPOOL_URL, GPUPOOL_TOKEN (else the token file in GPUPOOL_HOME)."""

    model_config = SettingsConfigDict(env_prefix="GPUPOOL_", extra="ignore")

    url: str = f"http://127.0.0.1:{DEFAULT_PORT}"
    token: str | None = None
    home: Path = DEFAULT_HOME
    timeout_s: float = 30.0

    @field_validator("home", mode="after")
    @classmethod
    def _home_is_absolute(cls, value: Path) -> Path:
        return expand_path(value)

    def resolved_token(self) -> str | None:
        """GPUPOOL_TOKEN, else the first line of $GPUPOOL_HOME/token, else None."""
        if self.token:
            return self.token.strip()
        path = self.home / "token"
        try:
            return path.read_text().strip() or None
        except OSError:
            return None
