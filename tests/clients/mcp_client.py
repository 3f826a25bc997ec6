"""Drive the official Python MCP SDK (PyPI `mcp`) over Streamable HTTP, headless.

The end-to-end tests run this script as a real third-party MCP client. It connects to one
URL, negotiates (initialize by default), optionally lists tools, calls tools, and prints
exactly one JSON document on stdout:

    {
      "ok": true,
      "error": null,
      "protocol_version": "2025-11-25",
      "server_info": {"name": ..., "version": ...},
      "tools": [{"name": ..., "description": ..., "input_schema": {...}}, ...] | null,
      "calls": [
        {
          "name": "count", "arguments": {...},
          "is_error": false,
          "content": [{"type": "text", "text": "..."}],
          "structured_content": null,
          "error": null,
          "started_at": 0.0012, "finished_at": 1.503,
          "progress": [{"progress": 1.0, "total": 5.0, "message": "...", "at": 0.31}, ...]
        }
      ],
      "http_responses": [
        {"method": "POST", "url": "...", "status": 401, "content_type": "...",
         "www_authenticate": "Bearer ...", "at": 0.01}, ...
      ]
    }

Times (`started_at`, `finished_at`, `at`) are seconds on a monotonic clock since the
script connected, so a test can check that progress notifications arrived spread over
time rather than all at the end.

The exit status is 0 when every step succeeded (a tool result with isError still counts
as a success: the test decides), 1 otherwise; the JSON document is printed either way.

Authentication: `--header` adds static headers (e.g. `Authorization: Bearer ...`).
`--oauth` runs the MCP authorization flow with the SDK's `OAuthClientProvider` (tokens kept
in memory for this run only): on a 401 it discovers the protected resource and authorization
server metadata, registers (dynamic registration, a Client ID Metadata Document URL with
`--client-metadata-url`, or a pre-registered `--client-id`), sends the headless browser
(`browser.py`, beside this script) through the authorization URL as `--user` with the cookie
jar `--cookie-jar` (so sessions carry across runs), and redeems the code. The browser never
calls the redirect URI (nothing listens there): the callback handler hands the SDK the code,
state and RFC 9207 `iss` the browser stopped at. The report then has an `oauth` object:

      "oauth": {
        "registration": "dcr" | "cimd" | "preregistered" | null,
        "client_id": "...",
        "metadata_requests": [{"url": ".../.well-known/oauth-protected-resource/mcp", "status": 200}, ...],
        "registration_requests": [{"url": ".../reg", "status": 201}],
        "authorizations": [{"url": "<authorization URL>", "callback_params": {"state": ..., "iss": ...},
                            "hops": 5, "interaction_hops": 2, "error": null}],
        "token_requests": [{"url": ".../token", "status": 200, "grant_type": "authorization_code",
                            "resource": "...", "scope": "..."}],
        "token": {"token_type": "Bearer", "scope": "...", "expires_in": 3600,
                  "has_refresh_token": true, "access_token_claims": {...} | null}
      }

(codes, tokens and secrets are never reported; `access_token_claims` is the decoded payload
of a JWT access token, unverified).

Account linking: with `--connect-links report` the client declares URL-mode elicitation and
records every "connect your account" prompt it meets in `connect`; with `--connect-links
open` it also opens each link with the headless browser as `--user` (cookie jar
`--cookie-jar`), as a person would, and then lets the call go on: an `input_required` URL
elicitation (2026-07-28) is answered `accept` and the SDK retries the call; a -32042 error
(2025-11-25) or a tool error whose text carries a `/connect/` link is followed by one retry of
the call. Each entry:

      "connect": [{"via": "input_required" | "url_elicitation_error" | "tool_result",
                   "url": "...", "message": "...", "final_status": 200,
                   "final_text": "GitHub connected ..."}]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import sys
import time
import traceback
import urllib.parse
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client, MCPError, UrlElicitationRequiredError
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, OAuthFlowError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

# The headless browser lives beside this script.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import browser  # noqa: E402


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="MCP endpoint URL")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="extra HTTP header sent with every request (repeatable)",
    )
    parser.add_argument(
        "--mode",
        default="legacy",
        help="'legacy' (initialize handshake, the default), 'auto' (probe server/discover "
        "first) or a protocol version such as 2026-07-28 (stateless)",
    )
    parser.add_argument("--list-tools", action="store_true", help="list the server's tools")
    parser.add_argument(
        "--call",
        action="append",
        nargs=2,
        default=[],
        metavar=("TOOL", "JSON_ARGUMENTS"),
        help="call a tool with a JSON object of arguments (repeatable, in order)",
    )
    parser.add_argument(
        "--timeout-secs",
        type=float,
        default=60.0,
        help="give up on the whole session after this many seconds",
    )
    parser.add_argument(
        "--pause-between-calls-secs",
        type=float,
        default=0.0,
        help="wait this long before each tool call after the first (e.g. to let a token expire)",
    )
    parser.add_argument(
        "--connect-links",
        choices=("report", "open"),
        default=None,
        help="declare URL elicitation and record connect prompts; 'open' also opens their links "
        "with the headless browser (--user, --cookie-jar) and retries the call",
    )
    parser.add_argument(
        "--no-url-elicitation",
        action="store_true",
        help="with --connect-links: do not declare URL elicitation (prompts come as tool errors)",
    )
    oauth = parser.add_argument_group("OAuth (the MCP authorization flow)")
    oauth.add_argument("--oauth", action="store_true", help="authorize with OAuthClientProvider")
    oauth.add_argument("--user", default=None, help="log in as this test IdP user (test_user cookie)")
    oauth.add_argument("--cookie-jar", default=None, help="the headless browser's cookie jar file")
    oauth.add_argument(
        "--consent", choices=("approve", "deny"), default="approve", help="what the browser clicks on consent forms"
    )
    oauth.add_argument(
        "--redirect-uri",
        default="http://127.0.0.1:33418/callback",
        help="redirect URI registered and sent (nothing needs to listen there)",
    )
    oauth.add_argument("--client-name", default="portcullis-tests python client")
    oauth.add_argument("--scope", default=None, help="scope for registration (the SDK picks the request scope)")
    oauth.add_argument(
        "--token-endpoint-auth-method",
        default=None,
        help="requested at registration, e.g. none for a public client (default: the server's choice)",
    )
    oauth.add_argument("--client-id", default=None, help="a pre-registered client id (no registration)")
    oauth.add_argument("--client-secret", default=None, help="its secret (client_secret_basic)")
    oauth.add_argument(
        "--client-metadata-url",
        default=None,
        help="an https Client ID Metadata Document URL, used when the server advertises CIMD",
    )
    return parser.parse_args(argv)


def parse_headers(raw_headers: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw in raw_headers:
        name, separator, value = raw.partition(":")
        if not separator or not name.strip():
            raise ValueError(f"--header must look like NAME:VALUE, got {raw!r}")
        headers[name.strip()] = value.strip()
    return headers


class InMemoryTokenStorage:
    """Tokens and client registration for this run only (the SDK's `TokenStorage`)."""

    def __init__(self, client_info: OAuthClientInformationFull | None) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info = client_info

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


def jwt_claims_unverified(token: str) -> dict[str, Any] | None:
    """The payload of a JWT (not verified), None for an opaque token."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None


class OAuthRun:
    """The OAuth side of one run: the SDK's provider, the headless browser, and the report."""

    def __init__(self, arguments: argparse.Namespace, report: dict[str, Any]) -> None:
        self.arguments = arguments
        self.report: dict[str, Any] = {
            "registration": None,
            "client_id": None,
            "metadata_requests": [],
            "registration_requests": [],
            "authorizations": [],
            "token_requests": [],
            "token": None,
        }
        report["oauth"] = self.report
        self._callback_params: dict[str, str] | None = None
        preregistered = None
        if arguments.client_id:
            preregistered = OAuthClientInformationFull(
                client_id=arguments.client_id,
                client_secret=arguments.client_secret,
                redirect_uris=[arguments.redirect_uri],
                token_endpoint_auth_method="client_secret_basic" if arguments.client_secret else "none",
            )
        self.preregistered = preregistered is not None
        self.storage = InMemoryTokenStorage(preregistered)
        self.provider = OAuthClientProvider(
            server_url=arguments.url,
            client_metadata=OAuthClientMetadata(
                redirect_uris=[arguments.redirect_uri],
                client_name=arguments.client_name,
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"],
                scope=arguments.scope,
                token_endpoint_auth_method=arguments.token_endpoint_auth_method,
            ),
            storage=self.storage,
            redirect_handler=self.open_browser,
            callback_handler=self.callback,
            client_metadata_url=arguments.client_metadata_url,
        )

    async def open_browser(self, authorization_url: str) -> None:
        entry: dict[str, Any] = {"url": authorization_url, "callback_params": None, "hops": 0,
                                 "interaction_hops": 0, "error": None}
        self.report["authorizations"].append(entry)

        def walk() -> browser.BrowserResult:
            return browser.authorize(
                authorization_url,
                user=self.arguments.user,
                cookie_jar=self.arguments.cookie_jar,
                consent=self.arguments.consent,
            )

        try:
            result = await anyio.to_thread.run_sync(walk)
        except browser.BrowserError as error:
            entry["error"] = str(error.args[0])
            if len(error.args) > 1:
                entry["hops"] = len(error.args[1].hops)
            raise OAuthFlowError(f"the headless browser stopped: {error.args[0]}") from error
        entry["hops"] = len(result.hops)
        entry["interaction_hops"] = sum(
            1 for hop in result.hops if "/interaction/" in urllib.parse.urlsplit(hop.url).path
        )
        entry["callback_params"] = {name: value for name, value in result.params.items() if name != "code"}
        self._callback_params = result.params

    async def callback(self) -> AuthorizationCodeResult:
        params, self._callback_params = self._callback_params or {}, None
        if "error" in params:
            raise OAuthFlowError(
                f"authorization failed: {params['error']}: {params.get('error_description', '')}"
            )
        if "code" not in params:
            raise OAuthFlowError(f"the callback carried no code: {sorted(params)}")
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))

    def record(self, response: httpx2.Response) -> None:
        """Files each OAuth request of the SDK by what it is (a response event hook)."""
        request = response.request
        url = str(request.url)
        if request.method == "GET" and "/.well-known/" in request.url.path:
            self.report["metadata_requests"].append({"url": url, "status": response.status_code})
            return
        if request.method != "POST":
            return
        content_type = request.headers.get("content-type", "")
        body = request.content or b""
        if content_type.startswith("application/x-www-form-urlencoded"):
            form = dict(urllib.parse.parse_qsl(body.decode("utf-8", errors="replace")))
            if "grant_type" in form:
                self.report["token_requests"].append(
                    {
                        "url": url,
                        "status": response.status_code,
                        "grant_type": form["grant_type"],
                        "resource": form.get("resource"),
                        "scope": form.get("scope"),
                    }
                )
        elif content_type.startswith("application/json"):
            try:
                document = json.loads(body)
            except ValueError:
                return
            if isinstance(document, dict) and "redirect_uris" in document:
                self.report["registration_requests"].append({"url": url, "status": response.status_code})

    def finish(self) -> None:
        """Fills in what the run ended with: the registration kind and the token (no secrets)."""
        client_info = self.storage.client_info
        if client_info is not None:
            self.report["client_id"] = client_info.client_id
            if self.preregistered:
                self.report["registration"] = "preregistered"
            elif self.arguments.client_metadata_url and client_info.client_id == self.arguments.client_metadata_url:
                self.report["registration"] = "cimd"
            elif self.report["registration_requests"]:
                self.report["registration"] = "dcr"
        tokens = self.storage.tokens
        if tokens is not None:
            self.report["token"] = {
                "token_type": tokens.token_type,
                "scope": tokens.scope,
                "expires_in": tokens.expires_in,
                "has_refresh_token": tokens.refresh_token is not None,
                "access_token_claims": jwt_claims_unverified(tokens.access_token),
            }


def build_auth(arguments: argparse.Namespace, report: dict[str, Any]) -> OAuthRun | None:
    """The OAuth side of this run (`--oauth`), or None for static headers only."""
    if not arguments.oauth:
        return None
    return OAuthRun(arguments, report)


def dump_model(model: Any) -> Any:
    """A pydantic model as plain JSON data (aliases, no unset fields)."""
    if model is None:
        return None
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


CONNECT_LINK = re.compile(r"https?://\S+/connect/\S+")


class ConnectLinks:
    """Meets "connect your account" prompts: records them and (with `open`) opens the links."""

    def __init__(self, arguments: argparse.Namespace, report: dict[str, Any]) -> None:
        self.arguments = arguments
        self.entries: list[dict[str, Any]] = []
        report["connect"] = self.entries

    async def meet(self, via: str, url: str, message: str | None) -> None:
        entry: dict[str, Any] = {"via": via, "url": url, "message": message,
                                 "final_status": None, "final_text": None}
        self.entries.append(entry)
        if self.arguments.connect_links != "open":
            return

        def walk() -> browser.BrowserResult:
            return browser.visit(url, user=self.arguments.user, cookie_jar=self.arguments.cookie_jar)

        try:
            result = await anyio.to_thread.run_sync(walk)
        except browser.BrowserError as error:
            entry["final_text"] = f"browser error: {error.args[0]}"
            return
        entry["final_status"] = result.final_status
        entry["final_text"] = result.final_text

    async def on_elicitation(self, _context: Any, params: Any) -> Any:
        """The SDK's elicitation callback: URL requests are connect prompts."""
        if getattr(params, "mode", None) == "url":
            await self.meet("input_required", params.url, params.message)
            return types.ElicitResult(action="accept")
        return types.ElicitResult(action="decline")

    def link_in_tool_error(self, result: Any) -> str | None:
        if not result.is_error:
            return None
        for block in result.content:
            match = CONNECT_LINK.search(getattr(block, "text", "") or "")
            if match:
                return match.group(0)
        return None


def error_text(error: BaseException) -> str:
    """One readable line for an exception, unwrapping task-group exception groups."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(error_text(inner) for inner in error.exceptions)
    if isinstance(error, MCPError):
        return f"MCPError {error.code}: {error.message}"
    return f"{type(error).__name__}: {error}"


async def run(arguments: argparse.Namespace, report: dict[str, Any], clock_start: float) -> None:
    def now() -> float:
        return round(time.monotonic() - clock_start, 6)

    oauth = build_auth(arguments, report)
    http_client = create_mcp_http_client(
        headers=parse_headers(arguments.header), auth=oauth.provider if oauth else None
    )

    # The SDK turns an HTTP error into a generic MCP error; the tests need the status and
    # the challenge (401 + WWW-Authenticate), so every response is recorded as it arrives.
    async def record_response(response: httpx2.Response) -> None:
        report["http_responses"].append(
            {
                "method": response.request.method,
                "url": str(response.request.url),
                "status": response.status_code,
                "content_type": response.headers.get("content-type"),
                "www_authenticate": response.headers.get("www-authenticate"),
                "at": now(),
            }
        )
        if oauth is not None:
            oauth.record(response)

    http_client.event_hooks = {"response": [record_response]}
    try:
        await run_session(arguments, report, http_client, now)
    finally:
        if oauth is not None:
            oauth.finish()


async def run_session(
    arguments: argparse.Namespace, report: dict[str, Any], http_client: httpx2.AsyncClient, now: Any
) -> None:
    links = ConnectLinks(arguments, report) if arguments.connect_links else None
    options: dict[str, Any] = {}
    if links is not None and not arguments.no_url_elicitation:
        options["elicitation_callback"] = links.on_elicitation
    async with http_client:
        transport = streamable_http_client(arguments.url, http_client=http_client)
        async with Client(transport, mode=arguments.mode, cache=None, **options) as client:
            report["protocol_version"] = client.protocol_version
            report["server_info"] = dump_model(client.server_info)

            if arguments.list_tools:
                listed = await client.list_tools()
                report["tools"] = [
                    {
                        "name": tool.name,
                        "description": tool.description,
                        "input_schema": tool.input_schema,
                    }
                    for tool in listed.tools
                ]

            for index, (tool_name, raw_arguments) in enumerate(arguments.call):
                if index > 0 and arguments.pause_between_calls_secs > 0:
                    await asyncio.sleep(arguments.pause_between_calls_secs)
                tool_arguments = json.loads(raw_arguments)
                call: dict[str, Any] = {
                    "name": tool_name,
                    "arguments": tool_arguments,
                    "progress": [],
                    "error": None,
                    "retried": False,
                }
                report["calls"].append(call)

                async def on_progress(
                    progress: float,
                    total: float | None,
                    message: str | None,
                    progress_list: list[dict[str, Any]] = call["progress"],
                ) -> None:
                    progress_list.append(
                        {"progress": progress, "total": total, "message": message, "at": now()}
                    )

                call["started_at"] = now()
                try:
                    try:
                        result = await client.call_tool(
                            tool_name, tool_arguments, progress_callback=on_progress
                        )
                    except MCPError as error:
                        if links is None or error.code != -32042:
                            raise
                        # 2025-11-25: the URL elicitations travel in the error; open, retry once.
                        for elicitation in UrlElicitationRequiredError.from_error(error.error).elicitations:
                            await links.meet("url_elicitation_error", elicitation.url, elicitation.message)
                        if arguments.connect_links != "open":
                            raise
                        call["retried"] = True
                        result = await client.call_tool(
                            tool_name, tool_arguments, progress_callback=on_progress
                        )
                    link = links.link_in_tool_error(result) if links is not None else None
                    if link is not None:
                        texts = [getattr(block, "text", None) for block in result.content]
                        await links.meet("tool_result", link, " ".join(text for text in texts if text))
                        if arguments.connect_links == "open":
                            call["retried"] = True
                            result = await client.call_tool(
                                tool_name, tool_arguments, progress_callback=on_progress
                            )
                except Exception as error:  # reported, and the run fails
                    call["finished_at"] = now()
                    call["error"] = error_text(error)
                    raise
                call["finished_at"] = now()
                call["is_error"] = bool(result.is_error)
                call["content"] = [dump_model(block) for block in result.content]
                call["structured_content"] = result.structured_content


def main(argv: list[str]) -> int:
    arguments = parse_arguments(argv)
    report: dict[str, Any] = {
        "ok": False,
        "error": None,
        "protocol_version": None,
        "server_info": None,
        "tools": None,
        "calls": [],
        "http_responses": [],
    }
    clock_start = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(run(arguments, report, clock_start), arguments.timeout_secs))
        report["ok"] = True
    except BaseException as error:  # noqa: BLE001 - every failure goes into the report
        if isinstance(error, KeyboardInterrupt):
            raise
        report["error"] = error_text(error)
        traceback.print_exc(file=sys.stderr)
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
