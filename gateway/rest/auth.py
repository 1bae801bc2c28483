"""Pure-ASGI authentication in front of the REST routes (no BaseHTTPMiddleware: starlette#919)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth import Authenticator
from gateway.errors import BatchgateError
from gateway.rest.infer import error_messages


def authorize(auth: Authenticator, path: str, authorization: str | None) -> str | None:
    """The token's name, None on a public path; raises 401/403."""
    if path in auth.public_paths:
        return None
    principal = auth.identify(authorization)
    parts = path.strip("/").split("/")
    if parts[:2] == ["v2", "repository"] or path == "/v2/models/stats":
        auth.allow_admin(principal)
    elif parts[:2] == ["v2", "models"] and len(parts) > 2:
        auth.allow_model(principal, parts[2])
    return principal.name


class AuthMiddleware:
    """Refuses requests without a token allowed to do what they ask (401/403, v2 error body)."""

    def __init__(self, app: ASGIApp, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            principal = authorize(self.auth, scope["path"], authorization)
        except BatchgateError as exc:
            start, body = error_messages(exc)
            await send(start)
            await send(body)
            return
        if principal is not None:  # the per-client limits key on it (gateway.limits.client_key)
            scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
