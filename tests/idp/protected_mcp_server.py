"""An MCP server that only accepts access tokens of the test IdP, for OAuth client tests.

    python3 tests/idp/protected_mcp_server.py --issuer http://127.0.0.1:PORT [--scope S]...

It is an OAuth 2.1 protected resource built with the official Python MCP SDK (PyPI `mcp`):
Streamable HTTP at `/mcp`, RFC 9728 metadata at `/.well-known/oauth-protected-resource/mcp`
naming the IdP as its authorization server, 401 with `WWW-Authenticate: Bearer
resource_metadata=...` without a valid token. A token is valid when it is a JWT signed by a
key in the IdP's `/jwks`, with `iss` the IdP and `aud` this server's URL (RFC 8707: what the
IdP issues when the client sent `resource`), not expired, and with the `--scope`s.

So a real MCP client pointed at it runs the whole MCP authorization flow against the test
IdP: discovery, registration, the browser, the token request, the retried call. It also
stands in for an upstream MCP server that wants a user's token from a "GitHub-like"
provider. Tools: `whoami` (the token's subject, client, scopes, audience, email, groups as
JSON), `echo`, `list_pull_requests` (the caller's own pull requests: data that differs per
user), `check_caller` (whether the token's subject is the user the caller says it is;
counted) and `caller_stats` (how many checks, how many mismatches).

`--tool-auth` plays a GitHub-like server behind a gateway that links accounts: initialize,
tools/list and the like need no token (so a client can connect and see the tools before
the user linked anything), and each tool checks the bearer token itself (same rules),
answering a tool error without a valid one. Without it, every request needs a token.

Prints `protected-mcp-server listening on 127.0.0.1:PORT` once bound.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
from typing import Any

import anyio
import jwt
import uvicorn
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer

LISTENING_LINE_PREFIX = "protected-mcp-server listening on "


class IdpJwtVerifier:
    """Validates the IdP's JWT access tokens against its JWKS (RFC 9068 style)."""

    def __init__(self, issuer: str, audience: str, cache_keys: bool = False) -> None:
        self.issuer = issuer
        self.audience = audience
        # By default no key cache: a test that rotates the IdP's keys sees the change at
        # once. (PyJWKClient fetches again for an unknown kid even when caching.)
        self.jwks = jwt.PyJWKClient(
            f"{issuer}/jwks", cache_keys=cache_keys, cache_jwk_set=cache_keys, lifespan=60
        )

    def _verify(self, token: str) -> dict[str, Any]:
        signing_key = self.jwks.get_signing_key_from_jwt(token)
        return jwt.decode(
            token,
            signing_key.key,
            algorithms=["RS256", "ES256"],
            audience=self.audience,
            issuer=self.issuer,
            options={"require": ["exp", "iat", "sub"]},
        )

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            claims = await anyio.to_thread.run_sync(self._verify, token)
        except (jwt.PyJWTError, OSError) as error:
            print(f"token refused: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            return None
        return AccessToken(
            token=token,
            client_id=str(claims.get("client_id", "")),
            scopes=str(claims.get("scope", "")).split(),
            expires_at=int(claims["exp"]),
            resource=self.audience,
            subject=str(claims["sub"]),
            claims=claims,
        )


class CallerChecks:
    """Counts `check_caller` calls and the ones whose token was someone else's."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.checked = 0
        self.mismatches = 0

    def record(self, matched: bool) -> None:
        with self.lock:
            self.checked += 1
            if not matched:
                self.mismatches += 1


def build_server(
    issuer: str,
    resource_url: str,
    scopes: list[str],
    tool_auth: bool = False,
    record_tokens: str | None = None,
) -> MCPServer:
    verifier = IdpJwtVerifier(issuer, resource_url, cache_keys=tool_auth)
    recorded: set[str] = set()
    record_lock = threading.Lock()

    def remember(token: str) -> None:
        """Appends each distinct accepted token to `record_tokens` (tests scan logs for them)."""
        if record_tokens is None:
            return
        with record_lock:
            if token in recorded:
                return
            recorded.add(token)
            with open(record_tokens, "a", encoding="utf-8") as file:
                file.write(token + "\n")
    if tool_auth:
        server = MCPServer(name="protected-mcp-server")
    else:
        server = MCPServer(
            name="protected-mcp-server",
            token_verifier=verifier,
            auth=AuthSettings(
                issuer_url=issuer,
                resource_server_url=resource_url,
                required_scopes=scopes or None,
                validate_token_resource=True,
            ),
        )
    checks = CallerChecks()

    async def caller(ctx: Context) -> AccessToken:
        """The verified token of this call: from the SDK's auth middleware, or (tool auth)
        checked here from the request's Authorization header."""
        if not tool_auth:
            token = get_access_token()
            if token is None:
                raise ValueError("unauthorized")
            return token
        header = (ctx.headers or {}).get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise ValueError("unauthorized: no bearer token")
        token = await verifier.verify_token(value.strip())
        if token is None:
            raise ValueError("unauthorized: the token was refused")
        remember(token.token)
        missing = [scope for scope in scopes if scope not in token.scopes]
        if missing:
            raise ValueError(f"forbidden: missing scopes {missing}")
        return token

    @server.tool(description="Who the access token says is calling, as JSON")
    async def whoami(ctx: Context) -> str:
        token = await caller(ctx)
        claims = token.claims or {}
        return json.dumps(
            {
                "sub": token.subject,
                "client_id": token.client_id,
                "scopes": token.scopes,
                "aud": claims.get("aud"),
                "iss": claims.get("iss"),
                "email": claims.get("email"),
                "groups": claims.get("groups"),
            }
        )

    @server.tool(description="Returns its message")
    def echo(message: str) -> str:
        return message

    @server.tool(description="The caller's own open pull requests, as JSON")
    async def list_pull_requests(ctx: Context) -> str:
        token = await caller(ctx)
        user = token.subject
        return json.dumps(
            [
                {"number": 100 + index, "title": f"{user}: change {index}", "author": user, "state": "open"}
                for index in (1, 2)
            ]
        )

    @server.tool(description="Whether the token's subject is `expected`; counted")
    async def check_caller(expected: str, ctx: Context) -> str:
        token = await caller(ctx)
        matched = token.subject == expected
        checks.record(matched)
        return json.dumps({"sub": token.subject, "expected": expected, "match": matched})

    @server.tool(description="How many check_caller calls there were, and how many mismatched")
    def caller_stats() -> str:
        with checks.lock:
            return json.dumps({"checked": checks.checked, "mismatches": checks.mismatches})

    return server


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issuer", required=True, help="the test IdP's issuer URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--scope", action="append", default=[], help="a scope every token must carry")
    parser.add_argument(
        "--tool-auth",
        action="store_true",
        help="no token for initialize and listing; each tool checks the bearer token itself",
    )
    parser.add_argument(
        "--record-tokens",
        default=None,
        help="(tool auth) append every distinct accepted token to this file, for leak scans",
    )
    arguments = parser.parse_args(argv)

    # Bind first: the resource URL (the tokens' audience) contains the port.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((arguments.host, arguments.port))
    listener.listen(128)
    host, port = listener.getsockname()[:2]
    resource_url = f"http://{host}:{port}/mcp"

    app = build_server(
        arguments.issuer.rstrip("/"),
        resource_url,
        arguments.scope,
        arguments.tool_auth,
        arguments.record_tokens,
    ).streamable_http_app(
        host=host
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    print(f"{LISTENING_LINE_PREFIX}{host}:{port}", flush=True)
    uvicorn.Server(config).run(sockets=[listener])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
