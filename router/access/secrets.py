"""Virtual key material: ``sk-sb-<id>-<secret>``. The id (12 hex) is public: it names the key in
logs, the admin API and the database, and finds its record without the secret. Only the SHA-256
digest of the whole key is stored (the secret has 256 bits of entropy: a slow hash buys nothing);
every comparison is constant-time."""

from __future__ import annotations

import hashlib
import secrets
from typing import Final

PREFIX: Final = "sk-sb-"
ID_LENGTH: Final = 12
_HEX: Final = frozenset("0123456789abcdef")


def new_key(key_id: str | None = None) -> tuple[str, str, str]:
    """A fresh key: (id, the key itself, its digest); a rotation keeps the key's id."""
    key_id = key_id or secrets.token_hex(ID_LENGTH // 2)
    key = f"{PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
    return key_id, key, digest(key)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The public id of something shaped like a virtual key, else None."""
    if not key.startswith(PREFIX) or len(key) < len(PREFIX) + ID_LENGTH + 2:
        return None
    key_id = key[len(PREFIX) : len(PREFIX) + ID_LENGTH]
    if key[len(PREFIX) + ID_LENGTH] != "-" or not _HEX.issuperset(key_id):
        return None
    return key_id
