"""API tokens with roles, stored as HMAC-SHA256 under a server secret — never the token itself.

A token is ``aegle_`` + 32 random bytes (URL-safe base64); it is shown once, when created. The database keeps
``HMAC-SHA256(secret, token)``, the token's name (unique, what the audit log records), its role and its
creation/revocation times. Tokens carry 256 bits of entropy, so a keyed hash is enough (no slow KDF needed:
there is nothing to brute-force); the secret means a stolen database alone cannot even confirm a guess.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Literal, get_args

from core import ApiSettings

Role = Literal["device", "clinician", "operator", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
TOKEN_PREFIX = "aegle_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    revoked TEXT
);
"""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and role."""

    name: str
    role: str


@dataclass(frozen=True)
class TokenInfo:
    """A stored token's metadata (never the token)."""

    name: str
    role: str
    created: str
    revoked: str | None


def server_secret(settings: ApiSettings) -> bytes:
    """The HMAC key: ``token_secret`` if set, else the contents of ``token_secret_file`` (created if missing)."""
    if settings.token_secret is not None:
        return settings.token_secret.get_secret_value().encode()
    path = settings.token_secret_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip().encode()


class TokenStore:
    """SQLite table of hashed tokens; thread-safe."""

    def __init__(self, path: Path, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the token secret must be at least 16 bytes")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._secret = secret
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)
        os.chmod(path, 0o600)

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> TokenStore:
        """The store at ``settings.tokens_path`` keyed by :func:`server_secret`."""
        return cls(settings.tokens_path, server_secret(settings))

    def _digest(self, token: str) -> str:
        return hmac.new(self._secret, token.encode(), sha256).hexdigest()

    def create(self, name: str, role: str) -> str:
        """Create a token; returns it (the only time it exists in clear). Names are unique, even once revoked."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        if not _NAME_RE.match(name):
            raise ValueError(f"token name {name!r} must match {_NAME_RE.pattern}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC).isoformat()
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO tokens (name, role, digest, created) VALUES (?, ?, ?, ?)",
                    (name, role, self._digest(token), now),
                )
            except sqlite3.IntegrityError:
                raise ValueError(f"a token named {name!r} already exists") from None
        return token

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked token, else None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT name, role FROM tokens WHERE digest = ? AND revoked IS NULL", (self._digest(token),)
            ).fetchone()
        return Principal(*row) if row else None

    def revoke(self, name: str) -> bool:
        """Revoke the token ``name``; False if there is no such active token."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE tokens SET revoked = ? WHERE name = ? AND revoked IS NULL",
                (datetime.now(UTC).isoformat(), name),
            )
        return cur.rowcount == 1

    def list(self) -> list[TokenInfo]:
        """Every token's metadata, by name."""
        with self._lock:
            rows = self._db.execute("SELECT name, role, created, revoked FROM tokens ORDER BY name").fetchall()
        return [TokenInfo(*r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
