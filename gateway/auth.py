"""Bearer-token authentication for both fronts.

Tokens live hashed (SHA-256) in a YAML file named by ``auth.tokens_file``; a presented
token is hashed and compared against every entry with :func:`hmac.compare_digest`, so
neither the file nor the timing reveals a token. Each entry may limit the models it can
use and may be an admin (the only kind allowed to load, unload, promote, or read the
repository index and every model's statistics). Tokens and payloads are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import yaml

from gateway.config import AuthConfig, ConfigError
from gateway.errors import PermissionDenied, Unauthenticated


@dataclass(frozen=True)
class Principal:
    """Who a token belongs to and what it may do."""

    name: str
    models: frozenset[str] | None  # None: every model
    admin: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Authenticator:
    """Identifies bearer tokens and checks what their owners may touch."""

    def __init__(self, entries: list[tuple[str, Principal]], public_paths: frozenset[str]) -> None:
        self.entries = entries
        self.public_paths = public_paths

    @classmethod
    def from_config(cls, config: AuthConfig) -> Authenticator | None:
        """None when authentication is off (no tokens file configured)."""
        if config.tokens_file is None:
            return None
        try:
            doc: Any = yaml.safe_load(config.tokens_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"auth.tokens_file: cannot read {config.tokens_file}: {exc}") from None
        entries = []
        for index, item in enumerate(doc.get("tokens") or []):
            digest = str(item.get("sha256", "")).lower()
            if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
                raise ConfigError(f"{config.tokens_file}: tokens.{index}.sha256: expected 64 hex digits")
            models = item.get("models")
            allowed = None if models in (None, "*", ["*"]) else frozenset(str(m) for m in models)
            principal = Principal(str(item.get("name", f"token-{index}")), allowed, bool(item.get("admin", False)))
            entries.append((digest, principal))
        if not entries:
            raise ConfigError(f"{config.tokens_file}: no tokens: every request would be refused")
        return cls(entries, frozenset(config.public_paths))

    def identify(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated("missing bearer token (Authorization: Bearer <token>)")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("expected Authorization: Bearer <token>")
        digest = hash_token(token.strip())
        found = None
        for stored, principal in self.entries:  # compare with every entry: no early exit to time
            if hmac.compare_digest(stored, digest):
                found = principal
        if found is None:
            raise Unauthenticated("invalid token")
        return found

    @staticmethod
    def allow_model(principal: Principal, model: str) -> None:
        if principal.models is not None and model not in principal.models:
            raise PermissionDenied(f"token '{principal.name}' may not use model '{model}'")

    @staticmethod
    def allow_admin(principal: Principal) -> None:
        if not principal.admin:
            raise PermissionDenied(f"token '{principal.name}' is not an admin token")
