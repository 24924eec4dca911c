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
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Literal, get_args

from core import ApiSettings
from server.api.database import Database, IntegrityError, Schema

Role = Literal["device", "clinician", "operator", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
TOKEN_PREFIX = "aegle_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

_SCHEMA = Schema("""
CREATE TABLE IF NOT EXISTS tokens (
    name {text} PRIMARY KEY,
    role {text} NOT NULL,
    digest {text} NOT NULL UNIQUE,
    created {text} NOT NULL,
    revoked {text}
);
""")


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
    """The HMAC key: ``token_secret`` if set, else the contents of ``token_secret_file`` — created if missing,
    unless the tokens live in a shared database (``database_url``): replicas must share one secret, so a missing
    file is an error there rather than a new secret of this replica's own."""
    if settings.token_secret is not None:
        return settings.token_secret.get_secret_value().encode()
    path = settings.token_secret_file
    if not path.exists() and settings.database_url is not None:
        raise FileNotFoundError(
            f"token secret file {path} does not exist: with a shared database (database_url) every replica needs "
            "the same secret; set token_secret or provide token_secret_file"
        )
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
    """Table of hashed tokens (SQLite file or shared PostgreSQL database); thread-safe.

    Every check reads the table (nothing is cached), so a token revoked through one replica is refused by every
    replica sharing the database from the next request on.
    """

    def __init__(self, path: Path | str, secret: bytes, *, password: str | None = None) -> None:
        """``path``: the SQLite file, or a ``postgresql://`` URL (``password``: the database's)."""
        if len(secret) < 16:
            raise ValueError("the token secret must be at least 16 bytes")
        self._secret = secret
        self._db = Database(path, _SCHEMA, password)

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> TokenStore:
        """The store at ``settings.database_url`` (else ``settings.tokens_path``) keyed by :func:`server_secret`."""
        secret = server_secret(settings)
        return cls(settings.database_url or settings.tokens_path, secret, password=settings.database_secret())

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
        try:
            self._db.execute(
                "INSERT INTO tokens (name, role, digest, created) VALUES (?, ?, ?, ?)",
                (name, role, self._digest(token), now),
            )
        except IntegrityError:
            raise ValueError(f"a token named {name!r} already exists") from None
        return token

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked token, else None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        rows = self._db.query(
            "SELECT name, role FROM tokens WHERE digest = ? AND revoked IS NULL", (self._digest(token),)
        )
        return Principal(*rows[0]) if rows else None

    def revoke(self, name: str) -> bool:
        """Revoke the token ``name``; False if there is no such active token."""
        changed = self._db.execute(
            "UPDATE tokens SET revoked = ? WHERE name = ? AND revoked IS NULL", (datetime.now(UTC).isoformat(), name)
        )
        return changed == 1

    def list(self) -> list[TokenInfo]:
        """Every token's metadata, by name."""
        return [TokenInfo(*r) for r in self._db.query("SELECT name, role, created, revoked FROM tokens ORDER BY name")]

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()
