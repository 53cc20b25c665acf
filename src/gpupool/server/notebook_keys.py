"""Notebook secrets: the per-notebook Jupyter token, the one-time open token (`?ptoken=`) and the browser's
notebook session cookie, all derived with HMAC-SHA256 from one server key.

- **Jupyter token** = HMAC(key, "jupyter", workload id, run): random to anyone without the key, different for
  every notebook and every run, and recomputed (never stored) by the launch and by the proxy, so a server
  killed between the two still agrees with itself.
- **Open token** (`/notebooks/<id>/lab?ptoken=...`): names the user, the notebook and an expiry
  (OPEN_TOKEN_TTL_S); the proxy accepts each one once (its signature is remembered until it expires) and
  swaps it for the session cookie, so the link printed by `gpupool notebook open` is not a lasting credential.
- **Session cookie** `gpupool_nb_<id>` (HttpOnly, SameSite=Lax, Path=/notebooks/<id>/): the user and an
  expiry (SESSION_TTL_S), valid for that notebook only. The proxy still checks on every request that the
  user may open the notebook, so removing a member takes effect at once.

The key lives in `$GPUPOOL_HOME/notebook.key` (0600), created on first use.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from gpupool.domain.errors import ValidationError

KEY_BYTES = 32  # 256 bits, the HMAC-SHA256 block-size-safe standard key length
# A browser opens the printed link within seconds; 2 minutes allows a slow copy-paste, not a lasting link.
OPEN_TOKEN_TTL_S = 120
# A working day and then some: the cookie only opens this notebook, and membership is rechecked per request.
SESSION_TTL_S = 12 * 3600
COOKIE_PREFIX = "gpupool_nb_"


@dataclass(frozen=True, slots=True)
class Grant:
    """Who an open token or session cookie speaks for: a user, for one notebook, until `expires`."""

    user_id: int
    workload_id: int
    expires: float


class NotebookKeys:
    """The server's notebook key and what it signs. Thread-safe."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the notebook key must have at least 16 bytes")
        self._key = key
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path) -> NotebookKeys:
        """The key in `path`, created (0600, owner only) when absent."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(KEY_BYTES))
        return cls(bytes.fromhex(path.read_text().strip()))

    def _sign(self, *parts: object) -> str:
        message = "\x1f".join(str(p) for p in parts).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def jupyter_token(self, workload_id: int, run: int) -> str:
        """The Jupyter token of run `run` of notebook `workload_id` (48 hex characters)."""
        return self._sign("jupyter", workload_id, run)[:48]

    def open_token(self, user_id: int, workload_id: int, now: float) -> str:
        """A one-time open token for the user and notebook, valid OPEN_TOKEN_TTL_S from `now`."""
        expires = int(now) + OPEN_TOKEN_TTL_S
        return f"{user_id}.{expires}.{self._sign('open', user_id, workload_id, expires)}"

    def redeem_open_token(self, token: str, workload_id: int, now: float) -> Grant | None:
        """The grant of a valid, unexpired, not yet used open token for this notebook (and it is now used);
        None otherwise."""
        grant = self._check("open", token, workload_id, now)
        if grant is None:
            return None
        with self._lock:
            self._used = {sig: exp for sig, exp in self._used.items() if exp >= now}
            signature = token.rsplit(".", 1)[-1]
            if signature in self._used:
                return None
            self._used[signature] = grant.expires
        return grant

    def session_cookie(self, user_id: int, workload_id: int, now: float) -> tuple[str, str]:
        """(cookie name, value) of a notebook session for the user, valid SESSION_TTL_S from `now`."""
        expires = int(now) + SESSION_TTL_S
        return cookie_name(workload_id), f"{user_id}.{expires}.{self._sign('session', user_id, workload_id, expires)}"

    def check_session(self, value: str, workload_id: int, now: float) -> Grant | None:
        """The grant of a valid, unexpired session cookie value for this notebook; None otherwise."""
        return self._check("session", value, workload_id, now)

    def _check(self, purpose: str, token: str, workload_id: int, now: float) -> Grant | None:
        try:
            user, expires, signature = token.split(".")
            user_id, until = int(user), int(expires)
        except ValueError:
            return None
        if until < now or not hmac.compare_digest(signature, self._sign(purpose, user_id, workload_id, until)):
            return None
        return Grant(user_id, workload_id, float(until))


def cookie_name(workload_id: int) -> str:
    """The name of the session cookie of notebook `workload_id`."""
    return f"{COOKIE_PREFIX}{workload_id}"


def notebook_launch_env(kind: str, workload_id: int, run: int, node_address: str,
                        keys: NotebookKeys | None) -> dict[str, str]:
    """What a notebook's replica gets besides a job's: JUPYTER_TOKEN (read by Jupyter's IdentityProvider)
    and GPUPOOL_NOTEBOOK_IP (the node's address, where the proxy reaches it); {} for other kinds.
    ValidationError for a notebook when the server has no notebook key."""
    if kind != "notebook":
        return {}
    if keys is None:
        raise ValidationError("this server cannot run notebooks: it has no notebook key")
    return {"JUPYTER_TOKEN": keys.jupyter_token(workload_id, run), "GPUPOOL_NOTEBOOK_IP": node_address}
