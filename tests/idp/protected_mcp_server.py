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
JSON) and `echo`.

Prints `protected-mcp-server listening on 127.0.0.1:PORT` once bound.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

import anyio
import jwt
import uvicorn
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

LISTENING_LINE_PREFIX = "protected-mcp-server listening on "


class IdpJwtVerifier:
    """Validates the IdP's JWT access tokens against its JWKS (RFC 9068 style)."""

    def __init__(self, issuer: str, audience: str) -> None:
        self.issuer = issuer
        self.audience = audience
        # No key cache: a test that rotates the IdP's keys sees the change at once.
        self.jwks = jwt.PyJWKClient(f"{issuer}/jwks", cache_keys=False, cache_jwk_set=False)

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


def build_server(issuer: str, resource_url: str, scopes: list[str]) -> MCPServer:
    server = MCPServer(
        name="protected-mcp-server",
        token_verifier=IdpJwtVerifier(issuer, resource_url),
        auth=AuthSettings(
            issuer_url=issuer,
            resource_server_url=resource_url,
            required_scopes=scopes or None,
            validate_token_resource=True,
        ),
    )

    @server.tool(description="Who the access token says is calling, as JSON")
    def whoami() -> str:
        token = get_access_token()
        if token is None:
            return json.dumps(None)
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

    return server


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issuer", required=True, help="the test IdP's issuer URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--scope", action="append", default=[], help="a scope every token must carry")
    arguments = parser.parse_args(argv)

    # Bind first: the resource URL (the tokens' audience) contains the port.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((arguments.host, arguments.port))
    listener.listen(128)
    host, port = listener.getsockname()[:2]
    resource_url = f"http://{host}:{port}/mcp"

    app = build_server(arguments.issuer.rstrip("/"), resource_url, arguments.scope).streamable_http_app(
        host=host
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    print(f"{LISTENING_LINE_PREFIX}{host}:{port}", flush=True)
    uvicorn.Server(config).run(sockets=[listener])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
